"""A run as a user meets it (issue 35): mistakes refused before any work, Ctrl-C, a finished run
rerun, the best checkpoint, the test split of a PySlowFast-style folder."""
import os

import pytest

from engine_synthetic import builder, tiny_cfg
from gcvideo.config import ConfigError
from gcvideo.engine import train


def test_label_map_of_another_class_count_is_refused_before_any_work(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("run\njump\nswim\nclimb\n")  # 4 classes
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "DATA.LABEL_MAP", str(labels), num_classes=6)
    built = []
    with pytest.raises(ConfigError, match=r"lists 4 classes but MODEL\.NUM_CLASSES = 6: set MODEL\.NUM_CLASSES 4"):
        train(cfg, dataset_builder=lambda c, split: built.append(split))
    assert built == [] and not out.exists()  # no data read, nothing written


# ---------------------------------------------------------------------------
# The test list of a folder prepare_kinetics wrote (train.csv + val.csv, PySlowFast's layout)
# ---------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIDEOS = os.path.join(ROOT, "tests", "data", "files")


def _lists(folder, names=("train.csv", "val.csv")):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text(f"{VIDEOS}/realshort.mp4 0\n{VIDEOS}/part_0.mp4 1\n")
    return folder


def _file_builder(seen):
    """A dataset builder that, like ``build_dataset``, needs the split's annotation file."""
    from gcvideo.data.annotations import AnnotationError
    from gcvideo.data.dataset import annotation_path

    def build(cfg, split):
        path = annotation_path(cfg, split)
        if not os.path.exists(path):
            raise AnnotationError(f"{path}: annotation file does not exist")
        seen.append((split, os.path.basename(path), cfg.DATA.TEST_PATH_PREFIX))
        return builder()(cfg, split)
    return build


def test_test_list_falls_back_to_val_csv_only_when_left_at_its_default(tmp_path, capsys):
    from gcvideo.data.annotations import AnnotationError
    from gcvideo.engine.tester import build_test_set

    data = _lists(tmp_path / "k400")
    seen = []
    cfg = tiny_cfg(tmp_path / "run", "DATA.PATH_TO_DATA_DIR", str(data), "DATA.VAL_PATH_PREFIX", "/videos/val")
    build_test_set(cfg, _file_builder(seen))
    assert seen == [("test", "val.csv", "/videos/val")]  # the val list with the val videos' prefix
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"no {data / 'test.csv'}: testing on the validation list {data / 'val.csv'} (DATA.VAL_FILE; "
                   "set DATA.TEST_FILE to test another list)"]
    # a test.csv that exists is used
    (data / "test.csv").write_text((data / "val.csv").read_text())
    seen.clear()
    build_test_set(cfg, _file_builder(seen))
    assert seen == [("test", "test.csv", "")] and capsys.readouterr().out == ""
    # an explicitly named list that is missing is an error with the keys to set, not another list
    cfg = tiny_cfg(tmp_path / "run", "DATA.PATH_TO_DATA_DIR", str(data), "DATA.TEST_FILE", "official.csv")
    with pytest.raises(AnnotationError, match=r"official\.csv \(DATA\.TEST_FILE = 'official\.csv'\) does not "
                                              r"exist: .*DATA\.TEST_FILE val\.csv"):
        build_test_set(cfg, _file_builder(seen))
    # no val.csv either: the error too
    (data / "test.csv").unlink()
    (data / "val.csv").unlink()
    with pytest.raises(AnnotationError, match=r"test\.csv \(DATA\.TEST_FILE = 'test\.csv'\) does not exist"):
        build_test_set(tiny_cfg(tmp_path / "run", "DATA.PATH_TO_DATA_DIR", str(data)), _file_builder(seen))


def test_readme_test_line_works_on_a_prepare_kinetics_folder(tmp_path, capsys):
    """The README's ``test_net.py ... OUTPUT_DIR RUN DATA.PATH_TO_DATA_DIR /data/k400`` after
    prepare_kinetics (train.csv + val.csv): the 2 val videos are decoded and tested, a report is written."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import test_net

    out = tmp_path / "run"
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, num_classes=2), dataset_builder=builder())
    config = tmp_path / "trained.yaml"
    config.write_text(tiny_cfg(out, num_classes=2).dump())
    data = _lists(tmp_path / "k400")
    capsys.readouterr()
    rc = test_net.main(["--config", str(config), "OUTPUT_DIR", str(out), "DATA.PATH_TO_DATA_DIR", str(data)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "testing on the validation list" in captured.out
    report = out / "test_checkpoint_epoch0001_2x1" / "report.txt"
    assert report.exists() and "realshort.mp4" in (report.parent / "predictions.csv").read_text()


# ---------------------------------------------------------------------------
# Ctrl-C (SIGINT) as SIGTERM; a signal in the final test says what is saved
# ---------------------------------------------------------------------------
OPTS = ["TRAIN.CHECKPOINT_ITERS", 2, "TRAIN.KEEP_LAST", 10]


def _one_line_no_traceback(proc, start):
    lines = [line for line in proc.stdout.splitlines() if line.startswith(start)]
    assert len(lines) == 1, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_ctrl_c_saves_a_checkpoint_like_sigterm_and_the_same_command_resumes(tmp_path):
    import signal
    from engine_helpers import ok, run_engine
    from gcvideo.engine.run_checkpoints import list_checkpoints

    out = tmp_path / "run"
    # SIGINT while loading iteration 3 of epoch 2: that iteration finishes, is checkpointed, exit 130
    spec = {"signal_at": [1, 10, int(signal.SIGINT), str(tmp_path / "interrupted")]}
    proc = run_engine(out, "train", spec, *OPTS)
    assert proc.returncode == 130, proc.stderr[-3000:]
    saved = out / "checkpoints" / "checkpoint_epoch0002_iter000003.pth"
    assert _one_line_no_traceback(proc, "SIGINT") == f"SIGINT: saved {saved}; run the same command again to resume"
    assert list_checkpoints(str(out))[-1] == str(saved)
    proc = ok(run_engine(out, "train", spec, *OPTS))
    assert f"resuming from {saved}: epoch 2, iteration 3" in proc.stdout


def test_a_second_ctrl_c_stops_at_once_with_one_line(capsys):
    import signal
    from gcvideo.engine.signals import StopSignals as _StopSignals, TrainingStopped

    stops = _StopSignals()
    with stops.deferring("at once, without saving; the newest checkpoint in X is kept"):
        stops(signal.SIGINT, None)  # the first: noted, the loop saves at the end of the step
        assert stops.name == "SIGINT" and capsys.readouterr().out == ""
        with pytest.raises(TrainingStopped) as e:
            stops(signal.SIGINT, None)
    assert e.value.code == 130
    assert capsys.readouterr().out == \
        "SIGINT again: stopped at once, without saving; the newest checkpoint in X is kept\n"
    with pytest.raises(TrainingStopped) as e:  # outside the epochs (set-up, final test): at once
        _StopSignals()(signal.SIGTERM, None)
    assert e.value.code == 143
    assert capsys.readouterr().out == "SIGTERM: stopped during the set-up; nothing was written\n"


def test_sigterm_in_the_final_test_says_what_is_saved_and_how_to_finish(tmp_path):
    import signal
    from engine_helpers import run_engine

    out = tmp_path / "run"
    spec = {"signal_at_test": [2, int(signal.SIGTERM), str(tmp_path / "termed")]}
    proc = run_engine(out, "train", spec, "TRAIN.TEST_AT_END", True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    final = out / "checkpoints" / "checkpoint_epoch0002.pth"
    assert _one_line_no_traceback(proc, "SIGTERM") == (
        f"SIGTERM: stopped during the final test: training is finished and saved ({final}); run the same "
        "command again to run the test")
    assert final.exists()


def test_loader_workers_ignore_ctrl_c():
    """Ctrl-C reaches every process of the terminal's group; the workers leave it to the main process."""
    import signal
    import torch
    from gcvideo.engine.loader import ForkingLoader

    class Handlers(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return int(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)

    loader = ForkingLoader(Handlers(), batch_size=1, num_workers=1, worker_init_fn=lambda worker_id: None)
    assert [int(b) for b in loader] == [1, 1]
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the main process's own handler is untouched


# ---------------------------------------------------------------------------
# A finished run started again
# ---------------------------------------------------------------------------
def test_rerun_of_a_finished_run_says_so_and_does_not_retest(tmp_path):
    import signal
    from engine_helpers import ok, run_engine

    out = tmp_path / "run"
    final = out / "checkpoints" / "checkpoint_epoch0002.pth"
    report = out / "test_checkpoint_epoch0002_2x1" / "report.txt"
    # stopped in the final test: the same command runs the test only, then says the run is finished
    spec = {"signal_at_test": [2, int(signal.SIGTERM), str(tmp_path / "termed")]}
    assert run_engine(out, "train", spec, "TRAIN.TEST_AT_END", True).returncode == 143
    assert not report.exists()
    before = final.stat().st_mtime_ns
    proc = ok(run_engine(out, "train", spec, "TRAIN.TEST_AT_END", True))
    assert f"training finished at epoch 2 ({final}); running its final test" in proc.stdout
    assert "resuming" not in proc.stdout and "epoch 1/" not in proc.stderr  # no training step
    assert report.exists() and final.stat().st_mtime_ns == before
    written = report.read_text()
    proc = ok(run_engine(out, "train", spec, "TRAIN.TEST_AT_END", True))
    assert proc.stdout.strip().splitlines()[-1] == (
        f"run finished at epoch 2; report: {report}; to test again: python tools/test_net.py OUTPUT_DIR {out} "
        "(a new report folder; this one is kept)")
    assert "resuming" not in proc.stdout and "top-1" not in proc.stdout  # no test either
    assert report.read_text() == written and sorted(p.name for p in out.glob("test_*")) == [report.parent.name]


def test_a_second_test_of_the_same_checkpoint_and_views_never_replaces_the_report(tmp_path, capsys):
    from gcvideo.engine import test

    out = tmp_path / "run"
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, "TRAIN.TEST_AT_END", True), dataset_builder=builder())
    first = out / "test_checkpoint_epoch0001_2x1"
    written = (first / "report.txt").read_text()
    capsys.readouterr()
    res = test(tiny_cfg(out, "TEST.ENSEMBLE_METHOD", "logit_mean"), dataset_builder=builder())
    assert res["report_dir"] == f"{first}_2" and (first.parent / f"{first.name}_2" / "report.txt").exists()
    assert f"{first} holds an earlier report (kept): this test reports to {first}_2" in capsys.readouterr().out
    assert (first / "report.txt").read_text() == written


# ---------------------------------------------------------------------------
# A checkpoint is tested with the views it was trained for
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch tiny run (4 frames, 32 px, 2 classes) and a PySlowFast-style folder of 2 real videos."""
    tmp = tmp_path_factory.mktemp("trained")
    out = tmp / "run"
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, num_classes=2), dataset_builder=builder())
    return out, _lists(tmp / "k400")


def _tool(name):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    return __import__(name)


def test_another_config_is_refused_with_the_differing_keys(tmp_path, trained, capsys):
    from gcvideo.engine import test
    from gcvideo.models import CheckpointMismatchError

    out, data = trained
    other = tiny_cfg(out, "DATA.NUM_FRAMES", 8, "DATA.TEST_CROP_SIZE", 64, "DATA.MEAN", [0.5, 0.5, 0.5],
                     "DATA.PATH_TO_DATA_DIR", str(data), num_classes=2)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CheckpointMismatchError) as e:
        test(other)
    msg = str(e.value)
    assert "checkpoint_epoch0001.pth was trained with DATA.NUM_FRAMES = 4, DATA.TEST_CROP_SIZE = 32, DATA.MEAN = " \
           "[0.45, 0.45, 0.45] but this config has DATA.NUM_FRAMES = 8, DATA.TEST_CROP_SIZE = 64, DATA.MEAN = " \
           "[0.5, 0.5, 0.5]" in msg
    assert sorted(p.name for p in out.iterdir()) == before  # no report folder
    # the same through test_net and predict --config: one error line, nothing tested
    config = tmp_path / "other.yaml"
    config.write_text(other.dump())
    capsys.readouterr()
    assert _tool("test_net").main(["--config", str(config), "OUTPUT_DIR", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "DATA.NUM_FRAMES = 8" in err[0], err
    ckpt = str(out / "checkpoints" / "checkpoint_epoch0001.pth")
    assert _tool("predict").main([f"{VIDEOS}/realshort.mp4", "--config", str(config), "--checkpoint", ckpt]) == 2
    assert "DATA.TEST_CROP_SIZE = 64" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_without_config_the_checkpoints_own_config_is_used(trained, capsys):
    out, data = trained
    capsys.readouterr()
    # test_net OUTPUT_DIR RUN: the stored config (4 frames, 32 px), this folder's videos, 1x1 views
    assert _tool("test_net").main(["OUTPUT_DIR", str(out), "DATA.PATH_TO_DATA_DIR", str(data),
                                   "TEST.NUM_ENSEMBLE_VIEWS", "1"]) == 0, capsys.readouterr().err
    assert "over 2 videos" in capsys.readouterr().out
    assert (out / "test_checkpoint_epoch0001_1x1" / "report.txt").exists()
    # a key set on the command line is the user's choice: another test crop is tested, in its own folder
    assert _tool("test_net").main(["OUTPUT_DIR", str(out), "DATA.PATH_TO_DATA_DIR", str(data),
                                   "TEST.NUM_ENSEMBLE_VIEWS", "1", "DATA.TEST_CROP_SIZE", "48"]) == 0
    assert (out / "test_checkpoint_epoch0001_1x1_2" / "report.txt").exists()
    # predict --checkpoint alone: the stored config's views (1 clip x 1 crop of 4 frames at 32 px)
    ckpt = str(out / "checkpoints" / "checkpoint_epoch0001.pth")
    capsys.readouterr()
    assert _tool("predict").main([f"{VIDEOS}/realshort.mp4", "--checkpoint", ckpt, "--views", "1x1", "--json"]) == 0
    import json
    res = json.loads(capsys.readouterr().out)
    assert res[0]["ok"] and res[0]["views"] == "1x1" and len(res[0]["top"]) == 2


# ---------------------------------------------------------------------------
# The best checkpoint by validation top-1 (TRAIN.KEEP_BEST), and test_net --checkpoint best
# ---------------------------------------------------------------------------
def test_best_checkpoint_is_kept_beside_the_latest_and_test_net_picks_it(tmp_path, monkeypatch, capsys):
    import gcvideo.engine.trainer as trainer
    from engine_helpers import assert_same_state
    from gcvideo.engine import test
    from gcvideo.utils.io import load_checkpoint_file

    top1 = {1: 50.0, 2: 80.0, 3: 60.0, 4: 70.0}  # validation top-1 of each epoch: epoch 2 is the best

    def validate(run, fs, epoch, validate, last):
        return {"top1": top1[epoch + 1], "top5": 100.0, "mean_class_acc": 50.0, "videos": 6} if validate else None

    monkeypatch.setattr(trainer, "_precise_bn_and_validate", validate)
    out = tmp_path / "run"
    opts = ["TRAIN.EVAL_PERIOD", 1, "TRAIN.KEEP_LAST", 10]
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 3, *opts), dataset_builder=builder())
    ckdir = out / "checkpoints"
    best = load_checkpoint_file(str(ckdir / "checkpoint_best.pth"))
    assert best["best"] == {"top1": 80.0, "epoch": 2} and best["next_epoch"] == 2
    assert_same_state(best["model"], load_checkpoint_file(str(ckdir / "checkpoint_epoch0002.pth"))["model"])
    # resumed with more epochs: epoch 4 (70%) does not beat the stored 80%
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 4, *opts), dataset_builder=builder())
    assert load_checkpoint_file(str(ckdir / "checkpoint_best.pth"))["best"] == {"top1": 80.0, "epoch": 2}
    # KEEP_LAST prunes the epoch checkpoints, never the best one
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 5, "TRAIN.EVAL_PERIOD", 0, "TRAIN.KEEP_LAST", 1), dataset_builder=builder())
    assert sorted(p.name for p in ckdir.iterdir() if p.suffix == ".pth") == ["checkpoint_best.pth",
                                                                              "checkpoint_epoch0005.pth"]
    # test_net --checkpoint best tests it (the stored config), into its own report folder
    capsys.readouterr()
    res = test(tiny_cfg(out, "TEST.CHECKPOINT", "best"), dataset_builder=builder())
    assert res["report_dir"] == str(out / "test_checkpoint_best_2x1")
    capsys.readouterr()
    assert _tool("test_net").main(["--checkpoint", "best", "OUTPUT_DIR", str(tmp_path / "not_validated")]) != 0
    err = capsys.readouterr().err
    assert "no best checkpoint in OUTPUT_DIR" in err and "TRAIN.EVAL_PERIOD > 0" in err
