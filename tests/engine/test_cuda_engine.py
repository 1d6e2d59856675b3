"""The engine on a GPU (skipped without CUDA; CI has none): fp16 training with its GradScaler,
channels_last_3d and SyncBN resumes after SIGKILL to the weights of an uninterrupted GPU run,
and the multi-view test on the GPU (uint8 views normalised there) scores as on the CPU."""
import csv
import json
import signal

import pytest
import torch

from engine_helpers import assert_same_state, checkpoint, ok, run_engine

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ["DEVICE", "cuda", "TRAIN.MIXED_PRECISION", "fp16", "TRAIN.CHANNELS_LAST", True, "TRAIN.SYNC_BN", True,
       "TRAIN.CHECKPOINT_ITERS", 2, "TRAIN.KEEP_LAST", 10, "CONTEXT.TYPE", "gc",
       "CONTEXT.LOCATION", "[[], [0], [0], [0]]", "CONTEXT.ZERO_INIT", False]


def test_fp16_run_resumes_after_sigkill_to_the_same_weights(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = ok(run_engine(ref, "train", {}, *GPU))
    assert "cuda" in proc.stdout
    want = checkpoint(ref, "checkpoint_epoch0002.pth")
    assert want["grad_scaler"]["scale"] > 0  # fp16: the scaler's state is checkpointed
    spec = {"signal_at": [1, 13, int(signal.SIGKILL), str(tmp_path / "killed")]}
    proc = run_engine(run, "train", spec, *GPU)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = ok(run_engine(run, "train", spec, *GPU))
    assert "resuming from" in proc.stdout and "epoch 2, iteration 2" in proc.stdout
    got = checkpoint(run, "checkpoint_epoch0002.pth")
    assert got["global_iter"] == want["global_iter"] == 8
    # cuDNN deterministic; the few CUDA kernels without a deterministic mode (pooling backward)
    # may differ in the last bits, far below what a wrong RNG or GradScaler state would change
    assert_same_state(got["model"], want["model"], atol=1e-5)
    assert got["grad_scaler"] == want["grad_scaler"]


def test_multi_view_test_on_cuda_scores_as_on_cpu(tmp_path):
    spec = {"builder": {"val_videos": 7, "views": 2, "test": {"failed": [3]}}}
    out = tmp_path / "run"
    ok(run_engine(out, "train", spec, "SOLVER.MAX_EPOCH", 1))
    results, rows = {}, {}
    for device in ("cpu", "cuda"):
        ok(run_engine(out, "test", spec, "SOLVER.MAX_EPOCH", 1, "DEVICE", device))
        results[device] = json.loads((out / "result_test.json").read_text())
        with open(f"{results[device]['report_dir']}/predictions.csv") as f:
            rows[device] = list(csv.DictReader(f))
    for split in ("all", "decodable"):
        for key in ("top1", "top5", "mean_class_acc"):
            assert abs(results["cpu"]["metrics"][split][key] - results["cuda"]["metrics"][split][key]) < 1e-6
    assert len(rows["cpu"]) == len(rows["cuda"]) == 7
    for a, b in zip(rows["cpu"], rows["cuda"]):
        assert a.keys() == b.keys()
        for k in a:
            if k.startswith("score") and a[k]:
                assert abs(float(a[k]) - float(b[k])) < 1e-4, (k, a, b)
            else:
                assert a[k] == b[k], (k, a, b)
