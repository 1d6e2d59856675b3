"""torchrun with 2 gloo processes: same weights as 1 process with the same global batch; distributed
evaluation counts every video exactly once when the count does not divide by the processes; an
error of rank 0 reaches every process.

BN: per-process batch statistics differ from whole-batch ones, so both runs use TRAIN.SYNC_BN True
(on CPU our gloo CPUSyncBatchNorm; with one process it is plain BN) and MODEL.DROPOUT 0 (dropout
masks come from per-process RNG streams). Everything else is the default training path.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

from engine_helpers import assert_same_state, checkpoint, child_env, ok, run_engine

OPTS = ["TRAIN.SYNC_BN", True, "MODEL.DROPOUT", 0.0, "TRAIN.BATCH_SIZE", 4, "SOLVER.MAX_EPOCH", 1,
        "SOLVER.WARMUP_EPOCHS", 0.5, "TRAIN.CHECKPOINT_ITERS", 0]
# 7 test videos (odd), 2 views each, video 3 cannot be decoded
SPEC = {"builder": {"val_videos": 7, "views": 2, "test": {"failed": [3]}}}


def test_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run_engine(one, "train", SPEC, *OPTS))
    proc = ok(run_engine(two, "train", SPEC, *OPTS, nproc=2))
    assert "on 2 x cpu" in proc.stdout
    a, b = checkpoint(one, "checkpoint_epoch0001.pth"), checkpoint(two, "checkpoint_epoch0001.pth")
    assert a["global_iter"] == b["global_iter"] == 4
    assert len(b["rng"]) == 2  # both processes' RNG states are kept
    assert_same_state(a["model"], b["model"], atol=5e-5)  # measured max diff ~6e-6; 0.4 without SyncBN

    # distributed multi-view test: 7 videos over 2 processes, each counted once, failed one included
    ok(run_engine(two, "test", SPEC, *OPTS, nproc=2))
    ok(run_engine(one, "test", SPEC, *OPTS))
    r2 = json.loads((two / "result_test.json").read_text())
    r1 = json.loads((one / "result_test.json").read_text())
    assert r2["metrics"]["all"]["videos"] == 7 and r2["metrics"]["all"]["failed"] == 1
    assert r2["metrics"]["decodable"]["videos"] == 6
    for split in ("all", "decodable"):
        for key in ("top1", "top5", "mean_class_acc"):
            assert abs(r1["metrics"][split][key] - r2["metrics"][split][key]) < 1e-6
    with open(f"{r2['report_dir']}/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(7))
    assert (two / r2["report_dir"].split("/")[-1] / "failed_videos.txt").read_text().startswith("video_0003.mp4\t")


def test_teardown_order(tmp_path):
    """Each process frees its DDP/SyncBN model (which hold the process groups) before it destroys
    the groups, not at interpreter exit: freed after destroy_process_group, during finalization,
    gloo's objects went with the interpreter half gone (a rare SIGABRT, "terminate called without
    an active exception", seen once in CI)."""
    runner = Path(__file__).with_name("teardown_runner.py")
    proc = ok(run_engine(tmp_path / "two", "train", SPEC, *OPTS, nproc=2, runner=runner))
    for rank in (0, 1):
        events = [line.split(": ", 1)[1] for line in proc.stdout.splitlines()
                  if line.startswith(f"teardown rank{rank}: ")]
        assert events == ["model freed", "destroy_process_group"], f"rank {rank}: {events}"


def test_run_on_main_process_raises_rank0_error_everywhere(tmp_path):
    """The function runs on rank 0 only; its exception is raised on both ranks: the same type and
    message on rank 1 (so tools print one error line there too), or a RuntimeError naming it where
    the exception cannot be copied."""
    runner = Path(__file__).with_name("rank0_error_runner.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(runner), str(tmp_path)], env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted((tmp_path / "rank0.txt").read_text().splitlines() + (tmp_path / "rank1.txt").read_text().splitlines())
    in_use = "FolderInUse: OUTPUT_DIR = 'x' is in use by another run"
    assert lines == [f"rank0 fail_in_use: {in_use}", "rank0 fail_two_args: TwoArgError: left and right",
                     "rank0 write_once: ok",
                     f"rank1 fail_in_use: {in_use}", "rank1 fail_two_args: RuntimeError: rank 0 failed: "
                     "TwoArgError: left and right", "rank1 write_once: ok"]
    assert (tmp_path / "calls.txt").read_text() == "rank 0\n"
