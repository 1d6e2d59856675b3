"""Prediction on video files: toy videos, a real h264 file, broken files that don't stop the others."""
import json
import os
import subprocess
import sys

import pytest
import torch

from gcvideo.analysis.predict import parse_views, predict_videos
from gcvideo.config import load_cfg
from gcvideo.data import build_views_dataset
from gcvideo.engine.tester import class_names
from gcvideo.models import CheckpointMismatchError, build_model, build_model_from_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(ROOT, "tests", "data", "files")
REAL = os.path.join(FILES, "carphone_pristine.mp4")  # h264 in MP4
OTHER = [os.path.join(FILES, n) for n in ("test.avi", "cricket_trim.gif")]  # MPEG-4 part 2 in AVI (+ mp3); GIF


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny toy set, a GC config for it and a random 'trained' checkpoint."""
    from gcvideo.data import make_toy_dataset

    d = tmp_path_factory.mktemp("predict")
    toy = d / "toy"
    make_toy_dataset(str(toy), num_train=3, num_val=0, size=48, num_frames=16, workers=1)
    cfg_file = d / "gc.yaml"
    cfg_file.write_text(
        "MODEL:\n  WIDTH: 8\n  STAGE_DEPTHS: [1, 1, 1, 1]\n  NUM_CLASSES: 8\n  DROPOUT: 0.0\n"
        "CONTEXT:\n  TYPE: gc\n  LOCATION: [[], all, all, all]\n  ZERO_INIT: false\n"
        f"DATA:\n  LABEL_MAP: {json.dumps(str(toy / 'classes.txt'))}\n  NUM_FRAMES: 4\n  SAMPLING_RATE: 2\n"
        "  TEST_CROP_SIZE: 32\n")
    cfg = load_cfg(str(cfg_file))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.blocks[-1].proj.weight.normal_(0, 1.0)
    ckpt = d / "model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    broken = d / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    videos = sorted(str(p) for p in (toy / "videos" / "train").glob("*.mp4"))
    return dict(cfg=cfg, cfg_file=str(cfg_file), ckpt=str(ckpt), model=model, videos=videos, broken=str(broken),
                dir=d)


def test_parse_views():
    assert parse_views("10x3") == (10, 3) and parse_views("1X1") == (1, 1)
    for bad in ("10", "3x2", "0x3", "ax3"):
        with pytest.raises(ValueError):
            parse_views(bad)


def test_predictions_match_model_and_broken_files_do_not_stop(setup):
    cfg, model = setup["cfg"], setup["model"]
    videos = [setup["videos"][0], setup["broken"], REAL, str(setup["dir"] / "missing.mp4"), setup["videos"][1]]
    logged = []
    names = class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    res = predict_videos(build_model_from_checkpoint(cfg, setup["ckpt"]), build_views_dataset(cfg, videos, 2, 3),
                         names, topk=5, log=logged.append)
    assert [r["ok"] for r in res] == [True, False, True, False, True]
    assert res[1]["error"] and res[3]["error"] and len(logged) == 2 and "missing.mp4" in logged[1]
    names = open(cfg.DATA.LABEL_MAP).read().split()
    # each ok video: the mean over its 6 views of the softmax, top 5 in order, with class names
    assert all(r["views"] == "2x3" for r in res)
    ds = build_views_dataset(cfg, [videos[2]], 2, 3)
    x = ds[0]["video"]
    assert x.shape == (6, 3, 4, 32, 32)
    with torch.no_grad():
        probs = model(x).softmax(-1).mean(0)
    p, idx = probs.topk(5)
    top = res[2]["top"]
    assert [t["index"] for t in top] == idx.tolist()
    assert [t["name"] for t in top] == [names[i] for i in idx.tolist()]
    torch.testing.assert_close(torch.tensor([t["prob"] for t in top]), p, rtol=1e-5, atol=1e-6)
    assert all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:]))


@pytest.mark.skipif(not all(os.path.exists(p) for p in OTHER), reason="shared test videos not present")
def test_other_containers(setup):
    cfg = setup["cfg"]
    res = predict_videos(setup["model"], build_views_dataset(cfg, OTHER, 1, 1),
                         class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES), topk=3)
    assert [r["ok"] for r in res] == [True, True], [r["error"] for r in res]
    assert all(len(r["top"]) == 3 for r in res)


def test_inference_model_needs_every_weight(setup, tmp_path):
    cfg = setup["cfg"]
    sd = torch.load(setup["ckpt"])["model"]
    baseline = {k: v for k, v in sd.items() if ".context." not in k}
    path = tmp_path / "baseline.pth"
    torch.save(baseline, path)
    with pytest.raises(CheckpointMismatchError, match="context"):
        build_model_from_checkpoint(cfg, str(path))
    m = build_model_from_checkpoint(cfg, setup["ckpt"])
    assert not m.training


def test_predict_tool(setup, capsys, load_tool):
    """tools/predict.py's main() in this process (a subprocess per call would re-import torch)."""
    tool = load_tool("predict")
    ok_video = setup["videos"][2]
    args = ["--config", setup["cfg_file"], "--checkpoint", setup["ckpt"], "--views", "1x3"]
    rc = tool.main([ok_video, setup["broken"], REAL] + args + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 1, err  # one video failed
    res = json.loads(out)
    assert [o["ok"] for o in res] == [True, False, True]
    assert len(res[0]["top"]) == 5 and 0 < res[0]["top"][0]["prob"] <= 1
    assert "broken.mp4" in err
    rc = tool.main([REAL] + args)
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(REAL) and len(lines) == 6 and lines[1].strip().startswith("1. ")
    assert lines[1].strip().endswith("%")
    rc = tool.main([REAL, "--config", setup["cfg_file"], "--checkpoint", str(setup["dir"] / "nope.pth")])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err


def test_predict_tool_runs_as_a_script(setup):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "predict.py"), REAL, "--config",
                        setup["cfg_file"], "--checkpoint", setup["ckpt"], "--views", "1x1", "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["ok"]


@pytest.mark.parametrize("given", ["auto", "cpu"])
def test_device_auto_picks_cuda_only_when_present(given):
    from gcvideo.analysis.predict import resolve_device

    want = "cuda" if given == "auto" and torch.cuda.is_available() else "cpu"
    assert resolve_device(given).type == want


def test_predict_progress_counts_videos(setup, capsys, load_tool):
    """predict_videos(progress=True) and tools/predict.py: a bar on stderr that counts the videos
    (3 of them, the broken one included), named with the views, stdout left to the results."""
    cfg = setup["cfg"]
    videos = [setup["videos"][0], setup["broken"], setup["videos"][1]]
    names = class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    res = predict_videos(setup["model"], build_views_dataset(cfg, videos, 1, 1), names, progress=True)
    out, err = capsys.readouterr()
    assert len(res) == 3 and out == ""
    assert "predict (1x1 views): 100%" in err and "3/3" in err and "video" in err
    predict_videos(setup["model"], build_views_dataset(cfg, videos[:1], 1, 1), names)  # off by default
    assert capsys.readouterr().err == ""
    rc = load_tool("predict").main([setup["videos"][0], REAL, "--config", setup["cfg_file"], "--checkpoint",
                                    setup["ckpt"], "--views", "1x1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(json.loads(out)) == 2  # the bar does not mix with the results
    assert "predict (1x1 views): 100%" in err and "2/2" in err


def test_predict_error_lines_stand_apart_from_the_bar(setup, capsys, load_tool):
    """tools/predict.py with a broken video among good ones: its error line is a line of its own on
    stderr (the bar is cleared before it and redrawn after: tqdm.write), never glued onto the bar's text
    (lines as a terminal or ``str.splitlines`` cut them: at '\\n' and at the bar's '\\r')."""
    broken = setup["broken"]
    rc = load_tool("predict").main([setup["videos"][0], broken, setup["videos"][1], "--config", setup["cfg_file"],
                                    "--checkpoint", setup["ckpt"], "--views", "1x1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1 and [r["ok"] for r in json.loads(out)] == [True, False, True]
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: "), err
    assert "predict (" not in errors[0] and "video/s" not in errors[0], err
    assert "predict (1x1 views): 100%" in err and "3/3" in err  # the bar is still drawn to the end


def test_predict_uses_the_view_protocol(setup):
    """TEST.VIEW_PROTOCOL reaches predict: mmaction2's frames and crops (carphone: 120 frames, 176x144
    resized to 39x32; SampleFrames offsets 0 and 120 - 7, ThreeCrop left/right/middle), named in the result."""
    from gcvideo.data.transforms import PeerViewSpec, make_peer_views
    from gcvideo.data.decoder import decode_frames

    cfg = setup["cfg"].clone()
    cfg.defrost()
    cfg.TEST.VIEW_PROTOCOL = "mmaction2"
    ds = build_views_dataset(cfg, [REAL], 2, 3)
    inds = [[0, 2, 4, 6], [113, 115, 117, 119]]  # (T - 1) * R + 1 = 7: max offset 113, offsets 0 and 113
    frames = decode_frames(REAL, sum(inds, []))
    want = make_peer_views(frames, [[0, 1, 2, 3], [4, 5, 6, 7]],
                           PeerViewSpec("mmaction2", 32, 32, 3, cfg.DATA.MEAN, cfg.DATA.STD))
    torch.testing.assert_close(ds[0]["video"], want)
    names = class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    res = predict_videos(setup["model"], ds, names, topk=3)
    assert res[0]["protocol"] == "mmaction2" and res[0]["ok"]
    assert not torch.equal(ds[0]["video"], build_views_dataset(setup["cfg"], [REAL], 2, 3)[0]["video"])
