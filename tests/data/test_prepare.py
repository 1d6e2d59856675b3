"""prepare_kinetics and check_videos never lose or misplace a user's file, and say what they did.

Issues 35/36: workers die with a killed parent, one run per destination, splits are plain names,
two sources never become one output, the destination is not walked as a source, failures and
a full disk end with a non-zero exit, unknown classes and clips absent from --src are named.
"""
import contextlib
import errno
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import data_helpers as H

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_video(path, frames=6):
    """A 64x48 h264 clip of ``frames`` frames (milliseconds to write and to re-encode)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return H.write_index_video(str(path), frames, width=64, height=48, gop=4)


def tool(name, *args):
    """(exit code, stdout, stderr) of tools/<name> run in this process."""
    spec = importlib.util.spec_from_file_location("tool_" + name[:-3], os.path.join(ROOT, "tools", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = mod.main([*args, "--quiet"])
        except SystemExit as e:  # argparse, or a tool that exits itself
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


# A prepare run in its own process whose re-encoding waits: each job writes WAIT/<pid>.started,
# then waits until WAIT/go exists (at most 60 s) before encoding for real.
SLOW_PREPARE = textwrap.dedent("""
    import json, os, sys, time
    import dataclasses
    import gcvideo.data.prepare as P
    wait, src, dst, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real = P.reencode_video
    def slow(*a, **k):
        open(os.path.join(wait, f"{os.getpid()}.started"), "w").close()
        t0 = time.time()
        while not os.path.exists(os.path.join(wait, "go")) and time.time() - t0 < 60:
            time.sleep(0.05)
        return real(*a, **k)
    P.reencode_video = slow
    s = P.prepare_kinetics(src, dst, dataclasses.replace(P.PREPARE_DEFAULTS, short_side=32), workers=workers, progress=False)
    print(json.dumps(s))
""")


def start_slow_prepare(wait, src, dst, workers):
    os.makedirs(wait, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(wait), str(src), str(dst), str(workers)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def alive(pid):
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_stops_its_workers(tmp_path):
    for k in range(4):
        tiny_video(tmp_path / "src" / "abseiling" / f"c{k}.mp4")
    wait = tmp_path / "wait"
    proc = start_slow_prepare(wait, tmp_path / "src", tmp_path / "dst", 2)
    try:
        wait_for(lambda: len(list(wait.glob("*.started"))) == 2, 120, "two workers encoding")
        workers = [int(p.name.split(".")[0]) for p in wait.glob("*.started")]
        assert proc.pid not in workers and all(alive(w) for w in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        wait_for(lambda: not any(alive(w) for w in workers), 10, f"workers {workers} to end with their parent")
    finally:
        (wait / "go").touch()  # old code: let orphaned workers finish instead of sleeping 60 s
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def flat_kinetics(tmp_path, rows, present):
    """src/ with the clips of ``present`` (indices into ``rows``) and an annotation CSV of ``rows``
    ((label, youtube_id, split)); returns (src, csv path, clip stems)."""
    src = tmp_path / "src"
    stems = [f"{yid}_000010_000020" for _, yid, _ in rows]
    for i in present:
        tiny_video(src / f"{stems[i]}.mp4")
    ann = tmp_path / "kinetics_train.csv"
    ann.write_text(KINETICS_HEADER + "".join(f'"{label}",{yid},10,20,{split},0\n' for label, yid, split in rows))
    return src, ann, stems


def test_unknown_class_is_one_error_naming_file_and_line(tmp_path):
    src, ann, _ = flat_kinetics(tmp_path, [("abseiling", "aaa", "train"), ("air drumming", "bbb", "train"),
                                           ("juggling chainsaws", "ccc", "train")], [0, 1, 2])
    rc, out, err = tool("prepare_kinetics.py", "--src", str(src), "--dst", str(tmp_path / "dst"),
                        "--annotations", str(ann), "--workers", "1")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"{ann}:4: class 'juggling chainsaws' is not in the label map" in err and "--label-map" in err
    assert not (tmp_path / "dst").exists()  # refused before any work


def test_annotated_clips_absent_from_src_are_counted_and_listed(tmp_path):
    rows = [("abseiling", "aaa", "train"), ("air drumming", "bbb", "val"), ("zumba", "ccc", "train"),
            ("zumba", "ddd", "val")]
    src, ann, stems = flat_kinetics(tmp_path, rows, [0, 2])
    dst = tmp_path / "dst"
    rc, out, err = tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--annotations", str(ann),
                        "--workers", "1")
    assert rc == 0, err
    assert "2 videos: 2 re-encoded, 0 already done, 0 failed; 2 annotated clips not in --src (see missing.txt)" in out
    assert (dst / "missing.txt").read_text() == f"{stems[1]}\t{ann}:3\n{stems[3]}\t{ann}:5\n"
    assert (dst / "train.csv").read_text() == f"{stems[0]}.mp4 0\n{stems[2]}.mp4 399\n"
    # failed.txt is written (empty) when nothing failed, as the docs say
    assert (dst / "failed.txt").read_text() == ""


def test_failed_videos_exit_non_zero(tmp_path):
    src = tmp_path / "src" / "abseiling"
    tiny_video(src / "good.mp4")
    (src / "bad.mp4").write_text("not a video")
    rc, out, _ = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"),
                      "--workers", "1")
    assert rc == 1 and "2 videos: 1 re-encoded, 0 already done, 1 failed (see failed.txt)" in out
    assert (tmp_path / "dst" / "failed.txt").read_text().startswith(f"{src / 'bad.mp4'}\t")


def test_disk_full_while_writing_the_csv_is_one_error_line(tmp_path, monkeypatch):
    import gcvideo.utils.io as gio

    tiny_video(tmp_path / "src" / "abseiling" / "a.mp4")
    dst = tmp_path / "dst"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gio.os, "fsync", full)  # the atomic writer's flush to disk fails as on a full disk
    rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst), "--workers", "1")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write {dst / 'train.csv'}: no space left on device")
    assert not list(dst.glob("*.tmp-*"))  # the temporary file was removed
    monkeypatch.undo()
    rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst), "--workers", "1")
    assert rc == 0 and "0 re-encoded, 1 already done" in out and (dst / "train.csv").read_text() == "abseiling/a.mp4 0\n"


def test_two_runs_on_one_destination(tmp_path):
    """The second run is refused while the first holds --dst; the first completes every clip; later runs
    remove the temporaries of dead writers only."""
    for split in ("train", "val"):
        for k in range(2):
            tiny_video(tmp_path / "src" / split / "abseiling" / f"{split}{k}.mp4")
    dst, wait = tmp_path / "dst", tmp_path / "wait"
    first = start_slow_prepare(wait, tmp_path / "src", dst, 1)
    try:
        wait_for(lambda: list(wait.glob("*.started")), 120, "the first run to encode")
        rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst),
                            "--workers", "1")
        assert rc == 2 and err.startswith(f"error: --dst = '{dst}' is in use by another run (pid {first.pid} ")
        (wait / "go").touch()
        out, err = first.communicate(timeout=120)
    finally:
        (wait / "go").touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert json.loads(out)["encoded"] == 4
    assert (dst / "val.csv").read_text() == "val/abseiling/val0.mp4 0\nval/abseiling/val1.mp4 0\n"
    assert (dst / "train.csv").read_text() == "train/abseiling/train0.mp4 0\ntrain/abseiling/train1.mp4 0\n"
    # temporaries: a live writer's stay (this test process stands for one), a dead writer's go
    folder = dst / "val" / "abseiling"
    live = folder / f".x.mp4.tmp-prepare-{os.getpid()}.mp4"
    dead = folder / f".y.mp4.tmp-prepare-{dead_pid()}.mp4"
    dead_csv = dst / f"val.csv.tmp-{dead_pid()}-0123abcd"
    for p in (live, dead, dead_csv):
        p.write_bytes(b"half")
    rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst), "--workers", "1")
    assert rc == 0 and "0 re-encoded, 4 already done" in out
    assert live.exists() and not dead.exists() and not dead_csv.exists()


@pytest.mark.parametrize("split", ["../../x", "ABSOLUTE"])
def test_split_names_never_write_outside_dst(tmp_path, split):
    user = tmp_path / "user.csv"
    user.write_text("precious\n")
    if split == "ABSOLUTE":
        split = str(tmp_path / "user")
    dst = tmp_path / "a" / "b" / "dst"
    src, ann, _ = flat_kinetics(tmp_path, [("abseiling", "aaa", split)], [0])
    rc, out, err = tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--annotations", str(ann),
                        "--workers", "1")
    assert rc == 2 and err == f"error: {ann}:2: split {split!r} is not a plain name (no '/' or '\\', " \
                              "not starting with '.'): it names the output CSV inside --dst\n"
    assert user.read_text() == "precious\n" and not (tmp_path / "a" / "x.csv").exists()
    assert not dst.exists()


def test_two_sources_of_one_output_are_refused(tmp_path):
    folder = tmp_path / "src" / "abseiling"
    tiny_video(folder / "clip.mp4")
    (folder / "clip.webm").write_bytes((folder / "clip.mp4").read_bytes())  # decodes like any download
    tiny_video(folder / "other.mp4")
    dst = tmp_path / "dst"
    rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(dst), "--workers", "1")
    assert rc == 2 and err == (f"error: {folder / 'clip.mp4'} and {folder / 'clip.webm'} would both become "
                               f"{dst / 'abseiling' / 'clip.mp4'}: keep one of them in --src (move the other out) "
                               "and run again\n")
    assert not dst.exists()


def test_dst_inside_src_is_not_walked(tmp_path):
    src = tmp_path / "src"
    tiny_video(src / "videos_train" / "abseiling" / "a.mp4")
    tiny_video(src / "videos_val" / "zumba" / "b.mp4")
    dst = src / "prepared"
    runs = [tool("prepare_kinetics.py", "--src", str(src), "--dst", str(dst), "--workers", "1") for _ in range(2)]
    assert [rc for rc, _, _ in runs] == [0, 0]
    assert "2 videos: 2 re-encoded, 0 already done" in runs[0][1]
    assert "2 videos: 0 re-encoded, 2 already done" in runs[1][1]
    assert sorted(p.name for p in dst.glob("*.csv")) == ["train.csv", "val.csv"]
    assert (dst / "train.csv").read_text() == "videos_train/abseiling/a.mp4 0\n"
    assert not (dst / "prepared").exists()


def test_src_as_dst_is_refused(tmp_path):
    tiny_video(tmp_path / "src" / "abseiling" / "a.mkv")
    rc, _, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "src"))
    assert rc == 2 and "the copies would replace the originals" in err
    assert sorted(os.listdir(tmp_path / "src" / "abseiling")) == ["a.mkv"]


@pytest.mark.parametrize("args, message", [
    (["--x264-options", "tune"], "--x264-options 'tune' is not KEY=VALUE"),
    (["--x264-options", "=fastdecode"], "--x264-options '=fastdecode' is not KEY=VALUE"),
    (["--crf", "60"], "--crf 60 must be in 0..51"),
    (["--gop", "-1"], "--gop -1 must be >= 0"),
    (["--short-side", "0"], "--short-side 0 must be at least 2")])
def test_bad_encode_settings_are_one_error_line_before_any_work(tmp_path, args, message):
    """EncodeSettings (the tool's encoder options as one object) refuses a value x264 cannot use."""
    tiny_video(tmp_path / "src" / "abseiling" / "a.mkv")
    rc, out, err = tool("prepare_kinetics.py", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), *args)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "dst").exists()


def test_encode_settings_reach_the_encoder(tmp_path):
    """The object's fields are the x264 settings written into the copy (x264's own header says them)."""
    import dataclasses
    import gcvideo.data.prepare as P
    assert P.EncodeSettings.parse_x264_options(["tune=fastdecode", "b-pyramid=none"]) == dict(P.PREPARE_DEFAULTS.x264_options)
    tiny_video(tmp_path / "a.mp4", frames=12)
    encode = dataclasses.replace(P.PREPARE_DEFAULTS, short_side=32, crf=30, gop=5)
    assert P.reencode_video(str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), encode) == (42, 32, 12)  # 64*32/48
    info = (tmp_path / "b.mp4").read_bytes()
    assert b"crf=30.0" in info and b"keyint=5 " in info and b"cabac=0" in info


def test_check_videos_bad_num_classes_is_one_error_line_before_any_work(tmp_path):
    tiny_video(tmp_path / "a.mp4")
    (tmp_path / "val.csv").write_text("a.mp4 0\n")
    rc, out, err = tool("check_videos.py", "--csv", str(tmp_path / "val.csv"), "--num-classes", "0")
    assert rc == 2 and out == "" and err == "error: --num-classes 0 must be at least 1 (or left out)\n"
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "val.csv"]


def test_check_videos_with_nothing_found_says_the_prefix_is_wrong(tmp_path):
    """The official CSV checked without --prefix: not one clip is next to the CSV."""
    rows = [("abseiling", "aaa", "train"), ("air drumming", "bbb", "train"), ("zumba", "ccc", "train")]
    videos = tmp_path / "videos"
    src, ann, stems = flat_kinetics(tmp_path, rows, [0, 1, 2])
    os.rename(src, videos)
    rc, out, err = tool("check_videos.py", "--csv", str(ann), "--workers", "1")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {ann}: none of its 3 videos exists (the first would be ")
    assert "prefix is probably wrong" in err and "--prefix" in err
    assert sorted(os.listdir(tmp_path)) == ["kinetics_train.csv", "videos"]  # no header-only clean CSV
    rc, out, err = tool("check_videos.py", "--csv", str(ann), "--workers", "1", "--prefix", str(videos))
    assert rc == 0 and "0 of 3 videos cannot be used" in out, err
    assert (tmp_path / "kinetics_train.clean.csv").read_text() == ann.read_text()
    # some found: checked and reported as before (exit 0, the missing one listed)
    os.remove(videos / f"{stems[1]}.mp4")
    rc, out, err = tool("check_videos.py", "--csv", str(ann), "--workers", "1", "--prefix", str(videos))
    assert rc == 0 and "1 of 3 videos cannot be used (missing: 1)" in out, err


@pytest.mark.parametrize("case", ["utf16", "inf", "long"])
def test_bad_annotation_lines_are_one_error_naming_file_and_line(tmp_path, case):
    src, ann, _ = flat_kinetics(tmp_path, [("abseiling", "aaa", "train"), ("zumba", "bbb", "train")], [0, 1])
    text = ann.read_text()
    if case == "utf16":
        ann.write_bytes(text.encode("utf-16"))
        where = f"{ann}:1: UTF-16 text (byte-order mark); re-save it as UTF-8"  # annotations.iter_lines' wording
    elif case == "inf":
        ann.write_text(text.replace("bbb,10", "bbb,inf"))
        where = f"{ann}:3: bad youtube_id/time_start/time_end"
    else:
        ann.write_text(text.replace("bbb", "b" * 200000))  # over the line cap and the csv module's field limit
        where = f"{ann}:3: line longer than 65536 bytes"  # annotations.iter_lines' wording
    rc, out, err = tool("prepare_kinetics.py", "--src", str(src), "--dst", str(tmp_path / "dst"),
                        "--annotations", str(ann), "--workers", "1")
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {where}"), err
    assert not (tmp_path / "dst").exists()


def test_official_csv_lines_are_read_within_the_line_cap(tmp_path, monkeypatch):
    """The official CSVs are read with a bounded readline: a line longer than MAX_LINE_BYTES is refused
    with file:line after reading at most the cap (+1 byte), never whole (here a 5000-byte youtube_id
    under a 1000-byte cap; the csv module alone would have taken it)."""
    from gcvideo.data import annotations, prepare

    ann = tmp_path / "kinetics_train.csv"
    ann.write_text(KINETICS_HEADER + '"abseiling",aaa,10,20,train,0\n' + f'"abseiling",{"b" * 5000},10,20,train,0\n')
    monkeypatch.setattr(annotations, "MAX_LINE_BYTES", 1000)  # prepare reads through annotations.iter_lines
    asked = []
    real_open = open

    class Counting(io.BufferedReader):
        def readline(self, size=-1):
            asked.append(size)
            return super().readline(size)

    monkeypatch.setattr(annotations.path_manager, "open", lambda p, mode="r": Counting(real_open(p, "rb", buffering=0)))
    with pytest.raises(prepare.AnnotationError, match=rf"{ann}:3: line longer than 1000 bytes"):
        prepare._read_kinetics_csvs([str(ann)], {"abseiling": 0}, "")
    assert asked and all(0 < n <= 1001 for n in asked), asked


@pytest.mark.parametrize("case", ["latin1", "nul", "cr"])
def test_official_csvs_are_read_by_the_annotation_reader(tmp_path, case):
    """prepare reads the official CSVs with annotations' one line reader: a bad line is the very error
    ``load_annotations`` gives for the same file (file:line, what to do), and classic Mac line ends (a
    lone CR) are lines, as there (the csv module's own line splitting refused them)."""
    from gcvideo.data import prepare
    from gcvideo.data.annotations import AnnotationError, load_annotations

    ann = tmp_path / "kinetics_train.csv"
    rows = [KINETICS_HEADER.strip(), '"abseiling",aaa,10,20,train,0', '"zumba",bbb,30,40,val,0']
    keys = {"abseiling": 0, "zumba": 399}
    if case == "cr":
        ann.write_bytes("\r".join(rows).encode() + b"\r")
        assert prepare._read_kinetics_csvs([str(ann)], keys, "") == {
            "aaa_000010_000020": (0, "train", f"{ann}:2"), "bbb_000030_000040": (399, "val", f"{ann}:3")}
        return
    bad = b"caf\xe9" if case == "latin1" else b"bb\0b"  # a Latin-1 byte / a NUL on line 3
    ann.write_bytes("\n".join(rows).encode().replace(b"bbb", bad) + b"\n")
    with pytest.raises(AnnotationError) as want:
        load_annotations(str(ann), clip_layout="flat")
    with pytest.raises(AnnotationError) as got:
        prepare._read_kinetics_csvs([str(ann)], keys, "")
    assert str(got.value) == str(want.value) and str(got.value).startswith(f"{ann}:3: ")
    assert "re-save it as UTF-8" in str(got.value)
