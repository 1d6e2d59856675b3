"""The training checkpoint's contents (gcvideo/engine/run_checkpoints.py): ``training_state`` builds the
dict the module documents, ``restore_training_state`` loads it back into fresh objects (through a real
file read with weights_only=True) and refuses checkpoints of another model or epoch length."""
import pytest
import torch

from gcvideo.engine.optim import WarmupCosineSchedule
from gcvideo.engine.run_checkpoints import (FORMAT, RunPosition, TrainingObjects, get_rng_state,
                                            restore_training_state, rng_state_of, training_state)
from gcvideo.utils.io import atomic_save, load_checkpoint_file

KEYS = ["format", "model", "optimizer", "scheduler", "grad_scaler", "next_epoch", "next_iter", "global_iter",
        "iters_per_epoch", "world_size", "config", "rng", "epoch_meters", "best"]


def _objects(seed, width=3):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = WarmupCosineSchedule(optimizer, lr=0.1, max_epoch=2, warmup_epochs=0, warmup_start_factor=0.1,
                                    end_factor=0.0, iters_per_epoch=5)
    return TrainingObjects(model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False))


def _trained(seed=0):
    parts = _objects(seed)
    for it in range(3):  # momentum buffers and a schedule position to save
        parts.schedule.step(it)
        parts.optimizer.zero_grad()
        parts.model(torch.randn(2, 4)).square().sum().backward()
        parts.optimizer.step()
    return parts


def test_round_trip_through_a_file(tmp_path):
    parts = _trained()
    pos = RunPosition(1, 2, 7, 5, {"loss_sum": 1.5, "iters": 2, "data_s": 0.1, "time_s": 0.4},
                      {"top1": 50.0, "epoch": 1})
    rngs = [get_rng_state()]
    ck = training_state(parts, pos, world_size=1, config_text="SEED: 1\n", rngs=rngs)
    assert list(ck) == KEYS and ck["format"] == FORMAT and ck["grad_scaler"] == {}
    assert (ck["next_epoch"], ck["next_iter"], ck["global_iter"], ck["iters_per_epoch"]) == (1, 2, 7, 5)
    assert ck["config"] == "SEED: 1\n" and ck["epoch_meters"] == pos.meters and ck["best"] == pos.best
    path = str(tmp_path / "ck.pth")
    atomic_save(ck, path)
    fresh = _objects(1)
    assert not torch.equal(fresh.model.weight, parts.model.weight)
    got = restore_training_state(fresh, path, load_checkpoint_file(path), 5)
    assert got == pos
    for a, b in zip(fresh.model.state_dict().values(), parts.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       parts.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert fresh.schedule.state_dict() == parts.schedule.state_dict()
    assert torch.equal(rng_state_of(ck, 0)["torch"], rngs[0]["torch"])
    assert rng_state_of(ck, 3) is ck["rng"][0]  # a rank the writing run did not have: rank 0's


def test_epoch_end_checkpoints_restore_no_meters():
    parts = _trained()
    ck = training_state(parts, RunPosition(2, 0, 10, 5, {"loss_sum": 1.0, "iters": 5, "data_s": 0, "time_s": 1}),
                        world_size=2, config_text="", rngs=[get_rng_state()] * 2)
    got = restore_training_state(_objects(1), "ck.pth", ck, 4)  # another epoch length is fine at an epoch's end
    assert got == RunPosition(2, 0, 10, 4, {}, {}) and ck["world_size"] == 2


def test_refuses_another_model_or_a_changed_epoch_length_mid_epoch():
    ck = training_state(_trained(), RunPosition(0, 3, 3, 5), world_size=1, config_text="", rngs=[get_rng_state()])
    with pytest.raises(RuntimeError, match="checkpoint run/a.pth does not fit the model of this config"):
        restore_training_state(_objects(1, width=2), "run/a.pth", ck, 5)
    with pytest.raises(RuntimeError, match=r"run/a.pth was written mid-epoch with 5 iterations per epoch but this "
                                           r"run has 6 \(dataset or TRAIN.BATCH_SIZE changed\)"):
        restore_training_state(_objects(1), "run/a.pth", ck, 6)
