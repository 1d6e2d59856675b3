"""torchrun with 2 gloo processes: same weights as 1 process with the same global batch; distributed
evaluation counts every video exactly once when the count does not divide by the processes; an
error of rank 0 reaches every process.

BN: per-process batch statistics differ from whole-batch ones, so both runs use TRAIN.SYNC_BN True
(on CPU our gloo CPUSyncBatchNorm; with one process it is plain BN) and MODEL.DROPOUT 0 (dropout
masks come from per-process RNG streams). Everything else is the default training path.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
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


def test_stalled_rank_named_within_timeout(tmp_path):
    """Rank 1 stops itself (SIGSTOP) while loading its 2nd batch; rank 0 waits in the step's
    all-reduce. With DIST.TIMEOUT 8 s, rank 0 warns naming rank 1 within half of it (the step's
    limit: min(max(10 x median, 60 s), TIMEOUT / 2)), then fails with an error naming rank 1 and
    DIST.TIMEOUT and ends (torchrun reports it and stops the others), instead of 30 silent
    minutes and an error naming no rank. The stopped process is killed at the end."""
    marker, log = tmp_path / "stopped.pid", tmp_path / "torchrun.txt"
    spec = {"builder": {"num_videos": 32}, "signal_at": [0, 3, signal.SIGSTOP, str(marker), 1]}
    args = [str(Path(__file__).with_name("engine_runner.py")), str(tmp_path / "out"), "train", json.dumps(spec),
            "DIST.TIMEOUT", "8", "SOLVER.MAX_EPOCH", "1", "TRAIN.CHECKPOINT_ITERS", "0"]
    events = {"warning": "iteration 2 has waited 4 s (",
              "error": "RankTimeout: rank 0: waited DIST.TIMEOUT = 8 s and rank(s) 1 did not reach iteration 2",
              "rank 0 ended": "closing signal SIGTERM"}  # torchrun: a worker failed, the others are stopped
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc-per-node=2", *args], env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    pid, seen = None, {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(seen) < len(events):
            if pid is None and marker.exists() and marker.read_text():
                pid, stopped = int(marker.read_text()), time.monotonic()
            text = log.read_text()
            seen.update({k: time.monotonic() - stopped for k, needle in events.items()
                         if pid is not None and k not in seen and needle in text})
            time.sleep(0.1)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=60)
    text = log.read_text()
    assert pid is not None and set(seen) == set(events), text[-3000:]
    assert "for rank(s) 1, which have not reached it" in text
    assert seen["warning"] < 8 - 1 and 8 - 1 < seen["error"] < 8 + 10 and seen["rank 0 ended"] < 8 + 30, seen
    assert proc.returncode != 0


def test_step_watch_names_ranks_behind(caplog):
    """StepWatch of two ranks on one store (no processes): steps of ~0.05 s, DIST.TIMEOUT 2 s, so
    the limit is min(max(10 x 0.05, 60), 2 / 2) = 1 s. Rank 1 stays at iteration 2 while rank 0
    starts iteration 3: rank 0 names rank 1 (once), rank 1 says nothing. Then rank 1 goes on to
    iteration 4 while rank 0 stays at 3: rank 1, now the lowest rank that reached the step,
    names rank 0."""
    import logging

    import torch.distributed as dist

    from gcvideo.engine.distributed import StepWatch

    store = dist.HashStore()
    watches = [StepWatch(store, r, 2, timeout_s=2.0) for r in (0, 1)]
    try:
        for step in (0, 1):
            for w in watches:
                w.beat(step)
            time.sleep(0.05)
        assert all(abs(w.limit() - 1.0) < 1e-9 for w in watches)
        with caplog.at_level(logging.WARNING, logger="gcvideo.engine.distributed"):
            watches[0].beat(2)
            time.sleep(2.2)
            assert watches[0].ranks_behind() == [1] and watches[1].ranks_behind() == []
            first = [r.getMessage() for r in caplog.records]
            watches[1].beat(2)
            watches[1].beat(3)
            time.sleep(2.2)
        messages = [r.getMessage() for r in caplog.records]
    finally:
        for w in watches:
            w.close()
    assert len(first) == 1 and first[0].startswith("rank 0: iteration 3 has waited 1 s") and \
        "for rank(s) 1, which have not reached it" in first[0] and "DIST.TIMEOUT = 2 s" in first[0]
    assert len(messages) == 2 and messages[1].startswith("rank 1: iteration 4 has waited") and \
        "for rank(s) 0, which" in messages[1]
