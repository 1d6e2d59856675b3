"""bench/readme_walk.py reads the README's "Using it" commands: every step of the walk is there, and the
walk changes only paths, the interpreter and the placeholders. (The walk itself takes minutes on two
cores; its recorded output: bench/results/readme_walk.md.)"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _walk_module():
    spec = importlib.util.spec_from_file_location("readme_walk", os.path.join(ROOT, "bench", "readme_walk.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_readme_using_it_has_every_step_of_the_walk():
    w = _walk_module()
    cmds = w.readme_block(os.path.join(ROOT, "README.md"), "## Using it")
    tools = [w.tool_of(c) for c in cmds]
    assert tools == ["prepare_kinetics", "check_videos", "inflate_imagenet", "train_net", "train_net", "test_net",
                     "predict", "visualize_attention", "analyze_nonlocal", "export"], cmds
    # continuation lines joined, trailing comments dropped
    assert cmds[2] == ("python tools/inflate_imagenet.py --src resnet50.pth --config "
                       "configs/kinetics400/slow_r50_8x8_gc_all.yaml --dst inflated/slow_r50_gc_all.pth")
    assert cmds[1] == "python tools/check_videos.py --csv /data/k400/train.csv"
    flops = w.readme_block(os.path.join(ROOT, "README.md"), "## The paper's Kinetics table")
    assert [w.tool_of(c) for c in flops] == ["count_flops"]


def test_localise_changes_only_paths_interpreter_and_placeholders():
    w = _walk_module()
    paths = {"src": "/w/raw", "dst": "/w/k400", "CKPT": "/w/c.pth", "CONFIG": "configs/x.yaml",
             "NL_CONFIG": "configs/nl.yaml"}
    tools = os.path.join(ROOT, "tools")
    got = w.localise("torchrun --nproc-per-node 8 tools/train_net.py --config c.yaml DATA.PATH_TO_DATA_DIR /data/k400 "
                     "--csv /data/k400_raw/a.csv", paths)
    assert got == (f"{sys.executable} -m torch.distributed.run --nproc-per-node 1 {tools}/train_net.py --config "
                   "c.yaml DATA.PATH_TO_DATA_DIR /w/k400 --csv /w/raw/a.csv")
    got = w.localise("python tools/analyze_nonlocal.py --config NL_CONFIG --checkpoint CKPT --out CONFIG", paths)
    assert got == (f"{sys.executable} {tools}/analyze_nonlocal.py --config configs/nl.yaml --checkpoint /w/c.pth "
                   "--out configs/x.yaml")
    assert w.localise(".venv/bin/python tools/count_flops.py", paths) == f"{sys.executable} {tools}/count_flops.py"
