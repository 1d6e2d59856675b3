"""The output folder: one run at a time (a lock held by a real second process), full disks (a
file-system stub raising ENOSPC), leftovers of earlier runs, ``file://`` folders, and the errors a
run says before it writes anything."""
import errno
import hashlib
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import gcvideo.utils.io as gio
from engine_helpers import child_env, run_engine
from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import train
import gcvideo.engine as engine
from gcvideo.engine.run_checkpoints import list_checkpoints
from gcvideo.models import build_model
from gcvideo.utils.folder_lock import FolderInUse, FolderLock
from gcvideo.utils.io import WriteError, load_checkpoint_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOLDER = """
import os, sys
from gcvideo.utils.folder_lock import FolderLock
out = sys.argv[1]
FolderLock(out).acquire()
os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
tmp = os.path.join(out, "checkpoints", "checkpoint_epoch0001.pth.tmp-%d-0123abcd" % os.getpid())
open(tmp, "wb").write(b"half a checkpoint")
print("locked", flush=True)
sys.stdin.read()
"""


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=child_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_engine(out, "train", {})
        assert proc.returncode != 0
        msg = proc.stderr.strip().splitlines()[-1]
        assert f"OUTPUT_DIR = {str(out)!r} is in use by another run (pid {holder.pid} on host " \
               f"{socket.gethostname()}" in msg, msg
        # the refused run wrote nothing and removed nothing: the holder's temporary file is still there
        tmp = out / "checkpoints" / f"checkpoint_epoch0001.pth.tmp-{holder.pid}-0123abcd"
        assert tmp.exists()
        assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait(timeout=60)
    with FolderLock(str(out)) as lock:  # nothing stale is left behind
        assert lock.fd is not None


class _FullDisk:
    """``open`` for gcvideo.utils.io: writes to a file whose name matches ``when(path)`` get half
    of the data, then ENOSPC (as a full file system does)."""

    def __init__(self, when):
        self.when, self.failed = when, []

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" not in mode or not self.when(path):
            return f
        stub = self

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(data[: len(data) // 2])
                f.flush()
                stub.failed.append(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

            def flush(self):
                f.flush()

            def fileno(self):
                return f.fileno()
        return Full()


def test_full_disk_leaves_no_temporary_and_a_restart_cleans_earlier_leftovers(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, "TRAIN.CHECKPOINT_ITERS", 2, "TRAIN.KEEP_LAST", 10)
    # 1. the disk is full when the end-of-epoch checkpoint is written (after the one of iteration 2):
    #    a one-line error naming the path and size
    full = _FullDisk(lambda p: "checkpoint_epoch0001.pth" in p)
    monkeypatch.setattr(gio, "open", full, raising=False)
    with pytest.raises(WriteError) as e:
        train(cfg, dataset_builder=builder())
    msg = str(e.value)
    target = out / "checkpoints" / "checkpoint_epoch0001.pth"
    assert "\n" not in msg and f"cannot write {target}: no space left on device (it needs " in msg
    assert re.search(r"needs [\d.]+ (KB|MB), [\d.]+ (KB|MB|GB) free\)", msg), msg
    earlier = out / "checkpoints" / "checkpoint_epoch0001_iter000002.pth"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [earlier.name]
    before = _sha(earlier)
    assert load_checkpoint_file(str(earlier))["next_iter"] == 2
    # 2. leftovers of an earlier run killed in its writes fill the disk: the restart removes them
    #    before it writes anything (config.yaml first), then resumes and finishes
    stale = [out / "config.yaml.tmp-4242-0123abcd", out / "checkpoints" / "checkpoint_epoch0002.pth.tmp-4242-89abcdef",
             out / "metrics.jsonl.tmp-4242-deadbeef"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    full = _FullDisk(lambda p: any(s.exists() for s in stale))
    monkeypatch.setattr(gio, "open", full)
    res = train(cfg, dataset_builder=builder())
    assert not full.failed and not any(s.exists() for s in stale)
    assert res["global_iter"] == 4 and _sha(earlier) == before
    assert [os.path.basename(p) for p in list_checkpoints(str(out))] == [earlier.name, "checkpoint_epoch0001.pth"]


def test_full_disk_while_logging_is_one_line(tmp_path):
    from gcvideo.engine.logger import RunLogger

    class FullFile:
        def write(self, *text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        flush = close = write

    log = RunLogger(str(tmp_path), enabled=True, progress=False)
    log._file = FullFile()
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'metrics.jsonl'}: no space left on device"):
        log.log_iter({"epoch": 1, "iter": 1, "global_iter": 1, "loss": 1.0, "lr": 0.1})
    log.close()  # the unflushed line is not reported twice


def test_file_uri_output_dir_is_written_in_its_folder(tmp_path, monkeypatch):
    """Every writer uses the folder of a file:// OUTPUT_DIR; a rerun after the annotation list was
    cleaned counts only the broken videos that are still in it."""
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "elsewhere" / "run"
    real.mkdir(parents=True)
    (real / "config.yaml").write_text("OUTPUT_DIR: an earlier run\n")
    # an earlier run's list: 2 videos since removed from the list (limit 0.1 * 16 = 1.6 videos)
    (real / "broken_videos.txt").write_text("gone_0001.mp4\tmissing\ngone_0002.mp4\tempty\n")
    synthetic = builder(train={"skipped": [3]})

    def build(cfg, split):
        ds = synthetic(cfg, split)
        ds.records = [SimpleNamespace(path=f"broken_{i:04d}.mp4") for i in range(len(ds))]  # as VideoDataset
        return ds

    cfg = tiny_cfg("file://" + str(real), "SOLVER.MAX_EPOCH", 1, "TRAIN.TEST_AT_END", True, "TRAIN.EVAL_PERIOD", 1,
                   "DATA.MAX_BROKEN_FRACTION", 0.1)
    res = train(cfg, dataset_builder=build)
    assert (real / "broken_videos.txt").read_text() == "broken_0003.mp4\tcannot decode\n"
    assert not (tmp_path / "file:").exists(), sorted(os.listdir(tmp_path))
    names = set(os.listdir(real))
    assert {"config.yaml", "metrics.jsonl", "curves.png", "checkpoints", "tb", "broken_videos.txt",
            "test_checkpoint_epoch0001_2x1"} <= names, names
    assert os.listdir(real / "tb")
    assert res["test"]["metrics"]["all"]["videos"] == 6


def test_test_falls_back_past_an_unreadable_newest_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    (out / "checkpoints").mkdir(parents=True)
    torch.save(build_model(cfg).state_dict(), out / "checkpoints" / "checkpoint_epoch0001.pth")
    (out / "checkpoints" / "checkpoint_epoch0002.pth").write_bytes(b"PK\x03\x04 cut by a full disk")
    res = engine.test(cfg, dataset_builder=builder())
    assert res["report_dir"].endswith("test_checkpoint_epoch0001_2x1")
    assert "skipping unreadable checkpoint" in capsys.readouterr().out


def test_a_second_test_of_the_same_checkpoint_is_refused_while_the_first_writes(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    (out / "checkpoints").mkdir(parents=True)
    torch.save(build_model(cfg).state_dict(), out / "checkpoints" / "checkpoint_epoch0001.pth")
    report = out / "test_checkpoint_epoch0001_2x1"
    with FolderLock(str(report), "the test report folder"):  # a first test (this process) is writing there
        with pytest.raises(FolderInUse, match=re.escape(f"the test report folder = {str(report)!r} is in use "
                                                        f"by another run (pid {os.getpid()} on host ")):
            engine.test(cfg, dataset_builder=builder())
    assert os.listdir(report) == [".gcvideo.lock"]  # the refused test wrote nothing
    res = engine.test(cfg, dataset_builder=builder())  # once the first has ended, the folder is free
    assert res["report_dir"] == str(report) and (report / "report.json").exists()
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import test_net

    data = tmp_path / "data"  # test_net reads real files: one real video
    data.mkdir()
    (data / "test.csv").write_text(os.path.join(ROOT, "tests", "data", "files", "demo.mp4") + " 0\n")
    y = tmp_path / "c.yaml"
    y.write_text(cfg.dump())
    # test_net: one "error: ..." line, no traceback (``report`` holds a report now: this test writes ``report``_2)
    with FolderLock(str(report) + "_2"):
        capsys.readouterr()
        assert test_net.main(["--config", str(y), "DATA.PATH_TO_DATA_DIR", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is in use by another run" in err[0], err


# ---------------------------------------------------------------------------
# Errors said before anything is written: one "error: ..." line, no OUTPUT_DIR
# ---------------------------------------------------------------------------
def _train_net(tmp_path, capsys, data_files, *opts):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import train_net

    data = tmp_path / "data"
    data.mkdir()
    for name, text in data_files.items():
        (data / name).write_text(text)
    out = tmp_path / "run"
    y = tmp_path / "c.yaml"
    y.write_text(f"OUTPUT_DIR: {out}\nDATA:\n  PATH_TO_DATA_DIR: {data}\n")
    small = ["MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]", "MODEL.NUM_CLASSES", "2", "DEVICE", "cpu",
             "TRAIN.BATCH_SIZE", "2", "TRAIN.EVAL_PERIOD", "0"]
    rc = train_net.main(["--config", str(y), *opts, *small])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()  # nothing created
    return err[0], data


LISTS = {"train.csv": "a.mp4 0\nb.mp4 1\nc.mp4 0\n", "val.csv": "d.mp4 0\n"}


def test_missing_test_annotation_is_said_before_training(tmp_path, capsys):
    # TRAIN.TEST_AT_END defaults to True; an explicitly named test list is not replaced by val.csv
    err, data = _train_net(tmp_path, capsys, LISTS, "DATA.TEST_FILE", "test_list.csv")
    assert f"TRAIN.TEST_AT_END is on but the test annotation file {data / 'test_list.csv'} " in err
    assert "DATA.TEST_FILE val.csv" in err and "TRAIN.TEST_AT_END False" in err


@pytest.mark.parametrize("files,opts,expected", [
    (dict(LISTS, **{"train.csv": "a.mp4 0\nb.mp4 x y z\n"}), [], r"train\.csv:2: "),
    (dict(LISTS, **{"train.csv": "a.mp4 0\n"}), [], r"1 clips, fewer than one global batch"),
    (LISTS, ["--init-from", "BAD"], r"checkpoint .*bad\.pth could not be read"),
    (LISTS, ["--init-from", "2D"], r"2D checkpoint has no weights for backbone key"),
], ids=["annotation", "one_batch", "checkpoint", "inflation"])
def test_errors_before_work_are_one_line(tmp_path, capsys, files, opts, expected):
    if opts and opts[1] == "BAD":
        (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 not a zip")
        opts = ["--init-from", str(tmp_path / "bad.pth")]
    elif opts and opts[1] == "2D":  # an ImageNet-style 2D ResNet without its stages
        torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8),
                    "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1), "fc.weight": torch.zeros(1000, 64)},
                   tmp_path / "r2d.pth")
        opts = ["--init-from", str(tmp_path / "r2d.pth")]
    err, _ = _train_net(tmp_path, capsys, dict(files, **{"test.csv": "e.mp4 1\n"}), *opts)
    assert re.search(expected, err), err


def test_folder_in_use_is_one_line_from_train_net(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import train_net

    (tmp_path / "data").mkdir()
    for name, text in dict(LISTS, **{"test.csv": "e.mp4 1\n"}).items():
        (tmp_path / "data" / name).write_text(text)
    out = tmp_path / "run"
    y = tmp_path / "c.yaml"
    y.write_text(f"OUTPUT_DIR: {out}\nDATA:\n  PATH_TO_DATA_DIR: {tmp_path / 'data'}\n")
    with FolderLock(str(out)):  # another run (this process) holds the folder
        rc = train_net.main(["--config", str(y), "MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]",
                             "MODEL.NUM_CLASSES", "2", "DEVICE", "cpu", "TRAIN.BATCH_SIZE", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: OUTPUT_DIR = {str(out)!r} is in use by another run (pid {os.getpid()} "
                             f"on host {socket.gethostname()}, since "), err
    assert os.listdir(out) == [".gcvideo.lock"]
