"""tools/check_videos.py, tools/prepare_kinetics.py and tools/make_toy_dataset.py."""
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys

import av

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_tool(name, *args, subprocess_run=False, rc=0):
    """Run tools/<name> with ``args``: in this process (fast) or as a command; ``rc``: its expected exit status."""
    argv = [*args, "--quiet"]
    if subprocess_run:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *argv],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == rc, out.stderr[-2000:]
        return out.stdout
    spec = importlib.util.spec_from_file_location("tool_" + name[:-3], os.path.join(ROOT, "tools", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mod.main(argv) == rc
    return buf.getvalue()


def test_check_videos(broken, files_dir, tmp_path):
    rows = [os.path.join(files_dir, "part_0.mp4"), broken["text"], broken["missing"],
            os.path.join(files_dir, "realshort.mp4"), broken["undecodable"]]
    csv = tmp_path / "val.csv"
    csv.write_text("# my list\n" + "".join(f"{p} {i}\n" for i, p in enumerate(rows)))
    out = run_tool("check_videos.py", "--csv", str(csv), "--workers", "2")
    assert "3 of 5 videos cannot be used" in out
    lines = (tmp_path / "val.broken.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [rows[1], rows[2], rows[4]]
    assert [ln.split("\t")[1].split(":")[0] for ln in lines] == ["unreadable", "missing", "no_frames"]
    assert (tmp_path / "val.clean.csv").read_text() == f"# my list\n{rows[0]} 0\n{rows[3]} 3\n"


def test_check_options_reach_the_reader_and_refuse_bad_values(files_dir, tmp_path):
    """CheckOptions (the tool's options as one object): its prefix and label map reach load_annotations,
    its backend the decoder; a value it cannot use is one UsageError, before any file is written."""
    import pytest
    from gcvideo.data.check import CheckOptions, check_annotations
    from gcvideo.utils.errors import UsageError

    csv = tmp_path / "val.csv"
    csv.write_text("part_0.mp4 zumba\nrealshort.mp4 abseiling\ngone.mp4 zumba\n")
    labels = tmp_path / "classes.txt"
    labels.write_text("abseiling\nzumba\n")
    out = check_annotations(str(csv), CheckOptions(path_prefix=files_dir, label_map=str(labels), backend="pyav"),
                            out_dir=str(tmp_path / "out"), progress=False)
    assert (out["videos"], out["broken"], out["kinds"]) == (3, 1, {"missing": 1})
    assert (tmp_path / "out" / "val.clean.csv").read_text() == "part_0.mp4 zumba\nrealshort.mp4 abseiling\n"
    for bad, message in ((dict(backend="nope"), "backend 'nope' is not one of pyav, decord, torchcodec"),
                         (dict(fmt="csv"), "format 'csv' is not one of auto,"),
                         (dict(clip_layout="tree"), "clip layout 'tree' is not one of auto, class, flat"),
                         (dict(num_classes=0), "--num-classes 0 must be at least 1")):
        with pytest.raises(UsageError, match=message):
            CheckOptions(**bad)


def test_prepare_kinetics(files_dir, tmp_path):
    src = tmp_path / "src"
    (src / "videos_val" / "air drumming").mkdir(parents=True)
    (src / "videos_val" / "abseiling").mkdir(parents=True)
    (src / "videos_train" / "zumba").mkdir(parents=True)
    shutil.copy(os.path.join(files_dir, "part_0.mp4"), src / "videos_val" / "air drumming" / "a_000001_000011.mp4")
    shutil.copy(os.path.join(files_dir, "test.avi"), src / "videos_val" / "abseiling" / "b.avi")
    (src / "videos_train" / "zumba" / "bad.mp4").write_text("not a video")
    shutil.copy(os.path.join(files_dir, "realshort.mp4"), src / "videos_train" / "zumba" / "c.mp4")
    dst = tmp_path / "dst"
    (dst / "videos_val" / "abseiling").mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = dst / "videos_val" / "abseiling" / f".b.mp4.tmp-prepare-{gone.pid}.mp4"  # from an interrupted run
    stale.write_bytes(b"half")
    out = run_tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--short-side", "128",
                   "--workers", "2", rc=1)
    assert "4 videos: 3 re-encoded, 0 already done, 1 failed" in out
    assert not stale.exists()
    val = (dst / "val.csv").read_text().splitlines()
    assert val == ["videos_val/abseiling/b.mp4 0", "videos_val/air drumming/a_000001_000011.mp4\t1"]
    assert (dst / "train.csv").read_text() == "videos_train/zumba/c.mp4 399\n"
    assert "bad.mp4" in (dst / "failed.txt").read_text()
    for rel, size, frames in (("videos_val/abseiling/b.mp4", (170, 128), 164),
                              ("videos_val/air drumming/a_000001_000011.mp4", (170, 128), 32),
                              ("videos_train/zumba/c.mp4", (170, 128), 36)):
        with av.open(str(dst / rel)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == size and s.codec_context.name == "h264"
            assert sum(1 for _ in c.decode(video=0)) == frames
    before = os.path.getmtime(dst / "videos_val/abseiling/b.mp4")
    out = run_tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--short-side", "128", rc=1)
    assert "0 re-encoded, 3 already done" in out
    assert os.path.getmtime(dst / "videos_val/abseiling/b.mp4") == before
    assert not (dst / "videos_train/zumba/bad.mp4").exists()  # a failed clip leaves no output
    # the bad clip removed: the next run lists no failures (failed.txt emptied, not left over)
    (src / "videos_train" / "zumba" / "bad.mp4").unlink()
    out = run_tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--short-side", "128")
    assert "0 failed" in out and (dst / "failed.txt").read_text() == ""
    # the written CSVs load as they are
    from gcvideo.config import get_cfg
    from gcvideo.data import build_dataset
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(dst)
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 1, 1
    item = build_dataset(cfg, "val")[1]
    assert item["ok"] and item["label"] == 1


def test_make_toy_dataset_cli(tmp_path):
    out = run_tool("make_toy_dataset.py", "--out", str(tmp_path / "toy"), "--num-train", "8", "--num-val", "8",
                   "--size", "32", "--frames", "12", "--workers", "1", subprocess_run=True)
    assert "8 train + 8 val videos of 8 classes" in out
    assert len((tmp_path / "toy" / "train.csv").read_text().splitlines()) == 8


def test_reencode_short_gop(files_dir, tmp_path):
    from gcvideo.data.prepare import EncodeSettings, reencode_video
    out = str(tmp_path / "g.mp4")
    assert reencode_video(os.path.join(files_dir, "part_0.mp4"), out, EncodeSettings(short_side=64, gop=8)) == (84, 64, 32)  # 340 * 64 / 256 = 85 -> even 84
    with av.open(out) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert len(keys) == 32 and sum(keys) >= 4


def test_prepare_defaults_make_cheap_to_seek_copies(tmp_path):
    """The tool's default copies: a keyframe every 32 frames, x264 fastdecode (no CABAC, no deblocking),
    B-frames no frame references; every frame kept, in order (frame k still shows k)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import data_helpers as H
    from gcvideo.data import decode_frames

    src = tmp_path / "src" / "abseiling"
    src.mkdir(parents=True)
    H.write_index_video(str(src / "a.mp4"), 100, gop=250)
    dst = tmp_path / "dst"
    run_tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst), "--workers", "1")
    out = dst / "abseiling" / "a.mp4"
    with av.open(str(out)) as c:
        packets = sorted((p for p in c.demux(video=0) if p.size), key=lambda p: p.pts)
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 32, 64, 96]
    info = out.read_bytes()
    assert b"cabac=0" in info and b"deblock=0" in info and b"b_pyramid=0" in info and b"keyint=32" in info
    frames = decode_frames(str(out), list(range(100)), backend="pyav")
    assert [H.read_index(f) for f in frames] == list(range(100))
    # x264's own settings on request: --gop 0 and no options
    run_tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "plain"), "--workers",
             "1", "--gop", "0", "--x264-options")
    info = (tmp_path / "plain" / "abseiling" / "a.mp4").read_bytes()
    assert b"cabac=1" in info and b"keyint=250" in info
