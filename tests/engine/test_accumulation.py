"""Gradient accumulation (TRAIN.ACCUM_STEPS): K micro-batches of B rows give the gradient and the
update of one batch of K*B rows; one optimizer step, one grad-scaler step, one DDP all-reduce per
batch; the LR schedule and the iteration counts are the big batch's."""
import contextlib
import json

import pytest
import torch

from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import train
from gcvideo.engine.optim import WarmupCosineSchedule
from gcvideo.engine.device_prep import DevicePrep
from gcvideo.engine.trainer import EpochPosition, StepNumerics, train_one_epoch


def _batches(n, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(rows, 3, 2, 4, 4, generator=g, dtype=torch.float64),
             "label": torch.randint(0, 5, (rows,), generator=g)} for _ in range(n)]


def _model():
    """BN-free (so micro-batches see nothing of each other), float64, with a nonlinearity."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 5)).double()


def _train(batches, accum_steps, clip_norm=0.0, model=None, scaler=None):
    model = model if model is not None else _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    schedule = WarmupCosineSchedule(optimizer, lr=0.5, max_epoch=1, warmup_epochs=0, warmup_start_factor=0.1,
                                    end_factor=0.0, iters_per_epoch=len(batches))
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    stats = train_one_epoch(model, None, optimizer, schedule, batches, DevicePrep(torch.device("cpu")),
                            EpochPosition(0, len(batches)), StepNumerics(scaler, None, clip_norm, accum_steps))
    return model, stats


@pytest.mark.parametrize("clip_norm", [0.0, 0.05])
@pytest.mark.parametrize("accum_steps", [2, 4])
def test_micro_batches_give_the_big_batch_gradient_and_weights(accum_steps, clip_norm):
    """Two optimizer steps over batches of 8 rows: the last step's gradient (left in .grad), the weights
    and the logged mean loss equal the plain run's. Clipping (0.05 is far below the norm here) applies to
    the accumulated gradient; clipping each micro-batch, or a loss not divided by K, would differ by O(1).
    The loop computes the loss in float32 (``logits.float()``), so the tolerance is float32's."""
    batches = _batches(2, 8)
    big, big_stats = _train(batches, 1, clip_norm)
    acc, acc_stats = _train(batches, accum_steps, clip_norm)
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=lambda m: f"grad {name}: {m}")
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert acc_stats["iters"] == big_stats["iters"] == 2 and acc_stats["global_iter"] == 2
    assert acc_stats["loss"] == pytest.approx(big_stats["loss"], rel=1e-6)
    # (the check can fail: the update of the first micro-batch alone is another one)
    first, _ = _train([{k: v[:8 // accum_steps] for k, v in b.items()} for b in batches], 1, clip_norm)
    assert max((p - q).abs().max().item() for p, q in zip(first.parameters(), big.parameters())) > 1e-3


def test_uneven_micro_batches_are_weighted_by_their_rows():
    """7 rows in 3 micro-batches (3, 2, 2 rows): shares 3/7, 2/7, 2/7 still give the mean's gradient."""
    batches = _batches(1, 7, seed=1)
    big, _ = _train(batches, 1)
    acc, _ = _train(batches, 3)
    for p, q in zip(big.parameters(), acc.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7)


def test_ddp_syncs_only_the_last_micro_batch():
    """A model with DDP's ``no_sync``: forward and backward of micro-batches 1..K-1 run inside it (no
    all-reduce), the last one outside (its backward all-reduces the summed gradients)."""
    events = []

    class FakeDDP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.inside = _model(), False

        @contextlib.contextmanager
        def no_sync(self):
            self.inside = True
            try:
                yield
            finally:
                self.inside = False

        def forward(self, x):
            events.append(("forward", self.inside))
            y = self.net(x)
            y.register_hook(lambda g: events.append(("backward", self.inside)))
            return y

    _train(_batches(2, 8), 4, model=FakeDDP())
    step = [("forward", True), ("backward", True)] * 3 + [("forward", False), ("backward", False)]
    assert events == step * 2


def test_grad_scaler_steps_once_per_optimizer_step():
    """fp16's grad scaler: every micro-batch's loss is scaled, the optimizer step and the scale update
    happen once per batch (after the last micro-batch)."""
    calls = []

    class Scaler(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def step(self, optimizer, *a, **k):
            calls.append("step")
            return super().step(optimizer, *a, **k)

        def update(self, *a, **k):
            calls.append("update")
            return super().update(*a, **k)

    scaler = Scaler("cpu", init_scale=2.0 ** 4)
    _train(_batches(2, 8), 4, scaler=scaler)
    assert calls == (["scale"] * 4 + ["step", "update"]) * 2


def _records(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["global_iter"], r["lr"]) for r in rows if r.get("type") == "iter"]


def test_lr_schedule_and_iterations_are_the_big_batchs(tmp_path, capsys):
    """TRAIN.BATCH_SIZE is the batch of an optimizer step: with ACCUM_STEPS 4 (micro-batches of one
    video) a run has the iterations, LR of every iteration and checkpoints of the plain run."""
    opts = ["SOLVER.MAX_EPOCH", 2, "TRAIN.CHECKPOINT_ITERS", 2]
    big = train(tiny_cfg(tmp_path / "big", *opts), dataset_builder=builder())
    acc = train(tiny_cfg(tmp_path / "acc", *opts, "TRAIN.ACCUM_STEPS", 4), dataset_builder=builder())
    assert acc["global_iter"] == big["global_iter"] == 8  # 16 videos / 4 a step x 2 epochs
    assert _records(tmp_path / "acc") == _records(tmp_path / "big")
    assert len(_records(tmp_path / "big")) == 8
    assert sorted(p.name for p in (tmp_path / "acc" / "checkpoints").iterdir()) == \
        sorted(p.name for p in (tmp_path / "big" / "checkpoints").iterdir())
    assert "global batch 4 (1 x 4 micro-batches of 1 videos" in capsys.readouterr().out


def test_precise_bn_runs_the_micro_batches():
    """Precise BN with ACCUM_STEPS 2 forwards the step's micro-batches (2 rows each), never a whole batch
    of 4: its statistics are the plain average over the 4 micro-batches of the 2 batches used."""
    from torch.utils.data import DataLoader

    from gcvideo.engine.trainer import precise_bn

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.rows = torch.nn.BatchNorm3d(2), []

        def forward_features(self, x):
            self.rows.append(x.shape[0])
            return self.bn(x)

    g = torch.Generator().manual_seed(0)
    clips = [{"video": torch.randn(2, 1, 2, 2, generator=g) * (i + 1) + i} for i in range(12)]
    net = Net()
    assert precise_bn(net, DataLoader(clips, batch_size=4), 2, DevicePrep(torch.device("cpu")), None, accum_steps=2) == 2
    assert net.rows == [2, 2, 2, 2]
    micro = [torch.stack([c["video"] for c in clips[m * 2:(m + 1) * 2]]) for m in range(4)]  # (2, 2, 1, 2, 2)
    torch.testing.assert_close(net.bn.running_mean, torch.stack([b.mean((0, 2, 3, 4)) for b in micro]).mean(0))


def test_two_processes_with_accumulation_match_one_process(tmp_path):
    """torchrun, 2 gloo processes x 2 micro-batches of 1 video = 1 process x 4 micro-batches of 1 video:
    the same micro-batches (BN statistics per video in both), the gradient of the same mean loss, so
    the same weights (DDP's all-reduce after the last micro-batch, no_sync before). No dropout:
    its masks come from per-process RNG streams. BN running statistics are each process's own. Two
    steps (8 videos): measured max |diff| 1.2e-7; with more steps, BN over one video amplifies the
    reassociation (a channel with no variance in a video divides by sqrt(eps)): 2.5e-4 after 4."""
    from engine_helpers import checkpoint, ok, run_engine

    opts = ["MODEL.DROPOUT", 0.0, "SOLVER.MAX_EPOCH", 1, "SOLVER.WARMUP_EPOCHS", 0.5]
    spec = {"builder": {"num_videos": 8}}
    ok(run_engine(tmp_path / "one", "train", spec, *opts, "TRAIN.ACCUM_STEPS", 4))
    proc = ok(run_engine(tmp_path / "two", "train", spec, *opts, "TRAIN.ACCUM_STEPS", 2, nproc=2))
    assert "on 2 x cpu" in proc.stdout and "(2 x 2 micro-batches of 1 videos" in proc.stdout
    a, b = (checkpoint(tmp_path / n, "checkpoint_epoch0001.pth") for n in ("one", "two"))
    assert a["global_iter"] == b["global_iter"] == 2
    params = [k for k in a["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for k in params:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=2e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")
