"""Every tools/*.py answers a user's mistake alike: exit status 2 and exactly one line on stderr,
``error: ...`` naming what is wrong, no traceback, nothing written; and every tool takes config
overrides the same way (positional ``KEY VALUE`` anywhere, ``--opts`` as an alias), through one parser
(gcvideo.cli)."""
import argparse
import os
import signal
import subprocess
import sys

import pytest

from gcvideo.cli import ToolParser, error_line, split_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py") and f != "__init__.py")
TOY = os.path.join(ROOT, "configs", "toy", "slow_gc_toy.yaml")
CFG = ["--config", TOY, "DATA.LABEL_MAP", ""]  # a valid config (the toy data need not exist)
BAD_KEY = (["NOPE.KEY", "1"], "unknown config key NOPE")
BAD_VALUE = (["DATA.NUM_FRAMES", "0"], "DATA.NUM_FRAMES = 0 is not allowed")
UNKNOWN_OPTION = (["--nope"], "unrecognized arguments: --nope")

# tool -> {case: (argv, a part of the message)}; "missing" gives the tool a file that does not exist
CASES = {
    "analyze_nonlocal": dict(base=CFG + ["--checkpoint", "nope.pth", "--csv", "vids.csv"],
                             missing=(CFG + ["--checkpoint", "nope.pth", "--csv", "nope.csv"], "nope.csv")),
    "check_videos": dict(base=["--csv", "nope.csv"], missing=([], "nope.csv: annotation file does not exist"),
                         key=UNKNOWN_OPTION, value=(["--format", "nope"], "argument --format: invalid choice")),
    "count_flops": dict(base=CFG, missing=(["--config", "nope.yaml"], "config file nope.yaml does not exist")),
    "export": dict(base=CFG + ["--checkpoint", "nope.pth", "--format", "onnx", "--out", "m.onnx"],
                   missing=([], "nope.pth does not exist")),
    "inflate_imagenet": dict(base=CFG + ["--src", "nope.pth", "--dst", "x.pth"], missing=([], "nope.pth does not exist")),
    "make_kinetics_table": dict(base=[], key=UNKNOWN_OPTION),
    "make_toy_dataset": dict(base=["--out", "toy"], missing=(["--out", "a_file/toy"], "a_file/toy: Not a directory"),
                             key=UNKNOWN_OPTION, value=(["--size", "8"], "size=8 (>= 32)")),
    "predict": dict(base=["video.mp4"] + CFG + ["--checkpoint", "nope.pth"], missing=([], "nope.pth does not exist")),
    "prepare_kinetics": dict(base=["--src", ".", "--dst", "out"], missing=(["--src", "nope"], "nope is not a folder"),
                             key=UNKNOWN_OPTION, value=(["--workers", "x"], "invalid int value: 'x'")),
    "run_toy": dict(base=[], missing=(["--config", "nope.yaml"], "config file nope.yaml does not exist"),
                    key=(["--config", TOY, "NOPE.KEY", "1"], BAD_KEY[1]),
                    value=(["--config", TOY, "DATA.NUM_FRAMES", "0"], BAD_VALUE[1])),
    "test_net": dict(base=CFG, missing=(["--checkpoint", "nope.pth"], "TEST.CHECKPOINT = 'nope.pth': file does not exist")),
    "train_net": dict(base=CFG, missing=(["--init-from", "nope.pth"], "TRAIN.INIT_FROM = 'nope.pth': file does not exist")),
    "visualize_attention": dict(base=["video.mp4"] + CFG + ["--checkpoint", "nope.pth", "--out", "vis"],
                                missing=([], "nope.pth does not exist")),
}


def _params():
    for name in TOOLS:
        c = CASES.get(name, {})
        for case in ("missing", "key", "value"):
            if case in c or (case != "missing" and "--config" in c.get("base", [])):
                yield pytest.param(name, case, id=f"{name}-{case}")


def test_every_tool_has_its_cases():
    assert sorted(CASES) == TOOLS, "a new tool needs its user-error cases here"
    for name in TOOLS:
        assert sum(1 for p in _params() if p.values[0] == name) >= (1 if name == "make_kinetics_table" else 3), name


@pytest.mark.parametrize("name,case", list(_params()))
def test_user_error_is_one_line_and_exit_2(name, case, tmp_path, monkeypatch, capsys, load_tool):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    c = CASES[name]
    extra, expected = c.get(case) or {"key": BAD_KEY, "value": BAD_VALUE}[case]
    argv = c["base"] + extra
    try:
        rc = load_tool(name).main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (argv, out, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (argv, err)
    assert out == ""
    assert sorted(os.listdir(tmp_path)) == ["a_file"], "a refused command wrote something"


def test_console_command_answers_in_one_line(tmp_path):
    """The issue's three tracebacks, as scripts: one line, exit 2."""
    for script, argv in (("count_flops.py", ["--config", "nope.yaml"]), ("check_videos.py", ["--csv", "nope.csv"]),
                         ("prepare_kinetics.py", ["--src", "nope", "--dst", "out"])):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", script)] + argv, cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (script, r.stderr)
        assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_rank_timeout_is_one_error_line_and_exit_1(tmp_path, monkeypatch, capsys, load_tool):
    """A distributed run whose collective timed out (``RankTimeout``, raised by ``process_group`` naming the
    ranks behind, DIST.TIMEOUT and what to do) is one ``error:`` line from the tool, exit status 1 (the run
    stopped; not a user's mistake, 2), no traceback; library callers still catch a RuntimeError."""
    from gcvideo.engine.distributed import RankTimeout

    message = ("rank 0: waited DIST.TIMEOUT = 8 s and rank(s) 1 did not reach iteration 2 (stopped, crashed or "
               "stuck?); rerun the same command to resume from the last checkpoint (Timed out)")
    assert issubclass(RankTimeout, RuntimeError)
    monkeypatch.chdir(tmp_path)
    train_net = load_tool("train_net")

    def timed_out(cfg):
        raise RankTimeout(message) from RuntimeError("[gloo] Timed out waiting 8000ms for recv operation")

    monkeypatch.setattr(train_net, "train", timed_out)
    rc = train_net.main(CFG)
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and err == f"error: {message}\n", err


def _parser():
    p = ToolParser("doc")
    p.add_argument("videos", nargs="+")
    p.add_argument("--config", required=True)
    p.add_argument("--blocks", nargs="+", default=None)
    p.add_argument("--topk", type=int, default=5)
    return p


def test_overrides_are_positional_anywhere_and_opts_is_an_alias():
    p = _parser()
    a = p.parse_args(["a.mp4", "b.mp4", "--config", "c.yaml", "DATA.NUM_FRAMES", "4", "--topk", "3",
                      "OUTPUT_DIR", "runs/x", "SOLVER.BASE_LR", "-1"])
    assert a.videos == ["a.mp4", "b.mp4"] and a.topk == 3 and a.config == "c.yaml"
    assert a.opts == ["DATA.NUM_FRAMES", "4", "OUTPUT_DIR", "runs/x", "SOLVER.BASE_LR", "-1"]
    b = p.parse_args(["a.mp4", "b.mp4", "--config", "c.yaml", "--topk", "3",
                      "--opts", "DATA.NUM_FRAMES", "4", "OUTPUT_DIR", "runs/x", "SOLVER.BASE_LR", "-1"])
    assert vars(a) == vars(b)
    # a key ends an option's list of values; the value of an option is never taken for a key
    c = p.parse_args(["v.mp4", "--blocks", "res4.5", "res5.0", "TEST.BATCH_SIZE", "2", "--config", "SEED"])
    assert c.blocks == ["res4.5", "res5.0"] and c.opts == ["TEST.BATCH_SIZE", "2"] and c.config == "SEED"
    assert split_overrides(p, ["x", "SEED", "3"]) == (["x"], ["SEED", "3"])


def test_every_config_tool_shows_one_override_syntax(capsys, load_tool):
    for name in TOOLS:
        with pytest.raises(SystemExit):
            load_tool(name).main(["--help"])
        usage = capsys.readouterr().out
        has_config = "--config" in usage
        assert ("[KEY VALUE ...]" in usage and "--opts [KEY VALUE ...]" in usage) == has_config, (name, usage[:600])


def test_error_line_of_os_errors_and_multiline_messages():
    assert error_line(FileNotFoundError(2, "No such file or directory", "x.csv")) == "x.csv: No such file or directory"
    assert error_line(ValueError("first\n  second")) == "first second"
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["v.mp4", "--config", "c", "SEED"])
    assert e.value.code == 2
    assert isinstance(_parser(), argparse.ArgumentParser)


def test_ctrl_c_outside_training_is_one_line_and_exit_130(tmp_path):
    # a tool interrupted while it works (as test_net while it loads a checkpoint): SIGINT to the real
    # process, which must answer with one line, no KeyboardInterrupt traceback, and 128 + SIGINT
    script = tmp_path / "slow_tool.py"
    script.write_text("import sys, time\nfrom gcvideo.cli import tool\n\n@tool\ndef main(argv=None):\n"
                      "    print('ready', flush=True)\n    time.sleep(60)\n    return 0\n\n"
                      "sys.exit(main())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted (Ctrl-C): stopped before finishing"], err
