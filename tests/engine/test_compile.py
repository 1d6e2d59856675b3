"""TRAIN.COMPILE: torch.compile of the training and evaluation steps on a tiny model on the CPU. The
compiled run's losses, weights and validation match the eager run's; its checkpoints hold the plain
module's keys (no ``_orig_mod.``), so a compiled run resumes an eager one and vice versa."""
import json

import pytest
import torch

from engine_helpers import assert_same_state
from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import train
from gcvideo.engine.trainer import compiled
from gcvideo.utils.io import load_checkpoint_file

# 8 videos, batch 4: 2 iterations an epoch, 2 epochs, validation (6 videos) after the second. No dropout:
# compiled code draws its masks from inductor's own random stream, so with dropout the two runs differ
OPTS = ["SOLVER.MAX_EPOCH", 2, "TRAIN.EVAL_PERIOD", 2, "TRAIN.KEEP_BEST", False, "MODEL.DROPOUT", 0.0]


def _run(out, compile_):
    return train(tiny_cfg(out, *OPTS, "TRAIN.COMPILE", compile_), dataset_builder=builder(num_videos=8))


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = {r["global_iter"]: r["loss"] for r in rows if r.get("type") == "iter"}  # (a resumed run redoes none)
    return [last[k] for k in sorted(last)]


def _weights(out, name="checkpoint_epoch0002.pth"):
    return load_checkpoint_file(str(out / "checkpoints" / name))["model"]


def _resume_from_epoch_1(out, compile_):
    """Drop the run's final checkpoint and run it again: it resumes from epoch 1's."""
    (out / "checkpoints" / "checkpoint_epoch0002.pth").unlink()
    return _run(out, compile_)


def test_compiled_wrapper_shares_the_plain_modules_weights():
    model = torch.nn.Linear(3, 2)
    assert compiled(model, False) is model
    wrapper = compiled(model, True)
    assert wrapper is not model and list(wrapper.state_dict())[0].startswith("_orig_mod.")  # (why we save `model`)
    assert all(a is b for a, b in zip(wrapper.parameters(), model.parameters()))


@pytest.mark.slow
def test_compiled_run_matches_eager_and_resumes_both_ways(tmp_path, capsys):
    """(Minutes on a 2-core CPU: the training step compiles on its first call, the evaluation on its.)"""
    eager, comp = tmp_path / "eager", tmp_path / "compiled"
    res_e, res_c = _run(eager, False), _run(comp, True)
    # the same losses at every iteration, the same final weights (to float32 reassociation), the same validation
    torch.testing.assert_close(_losses(comp), _losses(eager), rtol=1e-4, atol=1e-5)
    assert len(_losses(eager)) == 4
    w_e, w_c = _weights(eager), _weights(comp)
    assert list(w_c) == list(w_e) and not [k for k in w_c if "_orig_mod" in k]
    assert_same_state(w_c, w_e, atol=1e-4)
    assert res_c["val"][0]["top1"] == res_e["val"][0]["top1"]
    torch.testing.assert_close(res_c["val"][0]["top5"], res_e["val"][0]["top5"])
    # the compiled run's epoch-1 checkpoint resumed eagerly, the eager one's compiled: the same end
    capsys.readouterr()
    assert _resume_from_epoch_1(comp, False)["global_iter"] == 4
    assert _resume_from_epoch_1(eager, True)["global_iter"] == 4
    assert capsys.readouterr().out.count("checkpoint_epoch0001.pth: epoch 2, iteration 0") == 2
    assert_same_state(_weights(comp), w_c, atol=1e-4)
    assert_same_state(_weights(eager), w_e, atol=1e-4)
