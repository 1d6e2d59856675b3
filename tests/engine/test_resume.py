"""Kill / resume: SIGKILL mid-epoch and SIGTERM both resume to the weights of an uninterrupted run;
a kill during a checkpoint write leaves the previous checkpoint loadable."""
import json
import os
import signal

import pytest
import torch

from gcvideo.engine.run_checkpoints import list_checkpoints
from engine_helpers import assert_same_state, checkpoint, ok, run_engine

# 16 clips, batch 4 -> 4 iterations per epoch, 2 epochs, checkpoint every 2 iterations; dropout 0.5 (RNG use)
OPTS = ["TRAIN.CHECKPOINT_ITERS", 2, "TRAIN.KEEP_LAST", 10]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    ok(run_engine(out, "train", {}, *OPTS))
    return _final(out)


def _final(out):
    """The run's final checkpoint with its epoch records (``epoch_records``)."""
    final = checkpoint(out, "checkpoint_epoch0002.pth")
    final["epoch_records"] = _epoch_records(out)
    return final


def _epoch_records(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "epoch"]


def _assert_matches(reference, out):
    final = checkpoint(out, "checkpoint_epoch0002.pth")
    assert final["global_iter"] == reference["global_iter"] == 8
    assert_same_state(final["model"], reference["model"])
    for a, b in zip(final["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        assert_same_state(a, b)


def _sigkill_mid_epoch_and_resume(tmp_path, want, opts):
    """Train with ``opts``, SIGKILLed while loading the 4th batch of epoch 2 (iteration 2 checkpointed,
    iteration 3 done but lost), then the same command again: it resumes at epoch 2, iteration 2 and ends
    with ``want``'s weights, optimizer state and epoch losses. Returns the resumed run's process."""
    out = tmp_path / "run"
    spec = {"signal_at": [1, 13, int(signal.SIGKILL), str(tmp_path / "killed")]}
    proc = run_engine(out, "train", spec, *opts)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = [os.path.basename(p) for p in list_checkpoints(str(out))]
    assert names[-1] == "checkpoint_epoch0002_iter000002.pth", names
    proc = ok(run_engine(out, "train", spec, *opts))  # the same command again
    assert "epoch 2, iteration 2" in proc.stdout
    _assert_matches(want, out)
    # epoch 2's mean loss covers its 4 iterations, the 2 before the kill included (bit-exact run: equal)
    assert [r["loss"] for r in _epoch_records(out)] == [r["loss"] for r in want["epoch_records"]]
    return proc


def test_sigkill_mid_epoch_resumes_to_same_weights(tmp_path, reference):
    proc = _sigkill_mid_epoch_and_resume(tmp_path, reference, OPTS)
    assert "resuming from" in proc.stdout


def test_sigterm_saves_and_resumes_to_same_weights(tmp_path, reference):
    out = tmp_path / "run"
    # SIGTERM while loading iteration 3 of epoch 2: that iteration finishes, is checkpointed, exit 143
    spec = {"signal_at": [1, 10, int(signal.SIGTERM), str(tmp_path / "termed")]}
    proc = run_engine(out, "train", spec, *OPTS)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "SIGTERM: saved" in proc.stdout
    assert os.path.basename(list_checkpoints(str(out))[-1]) == "checkpoint_epoch0002_iter000003.pth"
    ok(run_engine(out, "train", spec, *OPTS))
    _assert_matches(reference, out)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, reference):
    out = tmp_path / "run"
    # the 3rd checkpoint write (epoch 2, iteration 2) is killed after its data, before the rename
    proc = run_engine(out, "train", {"kill_in_checkpoint_write": 3}, *OPTS)
    assert proc.returncode == -signal.SIGKILL
    ckdir = out / "checkpoints"
    leftovers = [p.name for p in ckdir.iterdir() if ".tmp-" in p.name]
    assert leftovers and leftovers[0].startswith("checkpoint_epoch0002_iter000002.pth.tmp-")
    names = [os.path.basename(p) for p in list_checkpoints(str(out))]
    assert names == ["checkpoint_epoch0001_iter000002.pth", "checkpoint_epoch0001.pth"]
    prev = checkpoint(out, "checkpoint_epoch0001.pth")  # loads with weights_only=True
    assert prev["next_epoch"] == 1 and prev["next_iter"] == 0
    proc = ok(run_engine(out, "train", {}, *OPTS))
    assert "resuming from" in proc.stdout and "epoch 2, iteration 0" in proc.stdout
    assert not [p.name for p in ckdir.iterdir() if ".tmp-" in p.name]  # stale temporary removed
    _assert_matches(reference, out)


def test_sigterm_in_an_epochs_last_iteration_evaluates_that_epoch_on_resume(tmp_path, reference):
    """Saved at "all iterations of epoch 1 done", not as the end of epoch 1: the resumed run does
    epoch 1's validation, epoch checkpoint and epoch record (with the epoch's training loss).
    The weights equal those of the uninterrupted run without validation: validating does not
    use the training's RNG stream (the eval loader has its own generator)."""
    out = tmp_path / "run"
    opts = [*OPTS, "TRAIN.EVAL_PERIOD", 1]
    # SIGTERM while loading the last batch (items 13-16) of epoch 1
    spec = {"signal_at": [0, 14, int(signal.SIGTERM), str(tmp_path / "termed")]}
    proc = run_engine(out, "train", spec, *opts)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert os.path.basename(list_checkpoints(str(out))[-1]) == "checkpoint_epoch0001_iter000004.pth"
    assert "val top-1" not in proc.stdout
    proc = ok(run_engine(out, "train", spec, *opts))
    assert "epoch 1, iteration 4" in proc.stdout
    assert "epoch 1: loss" in proc.stdout and "epoch 2: loss" in proc.stdout  # both epochs validated
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("type") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_top1" in r for r in epochs)
    iters = [r["loss"] for r in records if r.get("type") == "iter" and r["epoch"] == 1]
    assert abs(epochs[0]["loss"] - sum(iters) / len(iters)) < 1e-6  # epoch 1's own mean loss (LOG_PERIOD 1)
    assert os.path.exists(out / "checkpoints" / "checkpoint_epoch0001.pth")
    _assert_matches(reference, out)


MIXUP = [*OPTS, "MIXUP.ENABLE", True, "MODEL.LOSS", "soft_cross_entropy"]


def test_sigkill_mid_epoch_with_mixup_resumes_to_same_weights(tmp_path, reference):
    """Mixup/CutMix draws depend on (SEED, rank, epoch, iteration): the resumed run mixes each step as
    the uninterrupted one did (and the mixing did change the training: other weights than without)."""
    mixed = tmp_path / "mixed"
    ok(run_engine(mixed, "train", {}, *MIXUP))
    want = _final(mixed)
    assert not torch.equal(want["model"]["blocks.5.proj.weight"], reference["model"]["blocks.5.proj.weight"])
    _sigkill_mid_epoch_and_resume(tmp_path, want, MIXUP)


def test_sigkill_mid_epoch_with_gradient_accumulation_resumes_to_same_weights(tmp_path):
    """TRAIN.ACCUM_STEPS 2 (micro-batches of 2 videos): checkpoints fall on optimizer steps (iteration 2
    = 4 micro-batches), and the killed and resumed run ends with the uninterrupted run's weights."""
    opts = [*OPTS, "TRAIN.ACCUM_STEPS", 2]
    ref = tmp_path / "reference"
    ok(run_engine(ref, "train", {}, *opts))
    _sigkill_mid_epoch_and_resume(tmp_path, _final(ref), opts)
