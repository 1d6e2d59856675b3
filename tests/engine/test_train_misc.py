"""NaN loss stops with the iteration named and the checkpoint intact; checkpoint content and
pruning; RNG round trip; the output folder is never someone else's."""
import hashlib
import math
import os
import random

import numpy as np
import pytest
import torch

from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import NonFiniteLossError, train
from gcvideo.engine.run_checkpoints import get_rng_state, list_checkpoints, set_rng_state
from gcvideo.utils.io import load_checkpoint_file


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 2)
    build = builder(train={"nan_epoch": 1})  # every clip of epoch 2 is NaN
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 1 of 4 \(global iteration 5\)"):
        train(cfg, dataset_builder=build)
    ckpts = list_checkpoints(str(out))
    assert [os.path.basename(p) for p in ckpts] == ["checkpoint_epoch0001.pth"]
    before = _sha(ckpts[0])
    state = load_checkpoint_file(ckpts[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the same again (resumes from epoch 1's checkpoint, stops again): the checkpoint is untouched
    with pytest.raises(NonFiniteLossError):
        train(cfg, dataset_builder=build)
    assert _sha(ckpts[0]) == before


def test_nan_gradient_with_finite_loss_stops_before_the_step(tmp_path, monkeypatch):
    """A finite loss whose backward gives NaN gradients must not reach the weights (or a checkpoint)."""
    import gcvideo.engine.trainer

    real_build = gcvideo.engine.trainer.build_model
    calls = {"n": 0}

    def build_with_bad_backward(cfg):
        model = real_build(cfg)
        first = next(model.parameters())

        def hook(g):
            calls["n"] += 1
            return g * float("nan") if calls["n"] == 6 else g  # global iteration 6 = epoch 2, iteration 2
        first.register_hook(hook)
        return model

    monkeypatch.setattr(gcvideo.engine.trainer, "build_model", build_with_bad_backward)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan .* epoch 2, iteration 2 of 4"):
        train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 2), dataset_builder=builder())
    ckpts = list_checkpoints(str(out))
    assert [os.path.basename(p) for p in ckpts] == ["checkpoint_epoch0001.pth"]
    state = load_checkpoint_file(ckpts[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_contents_and_keep_last(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 2, "TRAIN.CHECKPOINT_ITERS", 1, "TRAIN.KEEP_LAST", 2,
                   "TRAIN.EVAL_PERIOD", 1)
    res = train(cfg, dataset_builder=builder())
    names = [os.path.basename(p) for p in list_checkpoints(str(out))]
    assert names == ["checkpoint_epoch0002_iter000003.pth", "checkpoint_epoch0002.pth"]
    ck = load_checkpoint_file(str(out / "checkpoints" / names[-1]))  # weights_only=True
    assert {"model", "optimizer", "scheduler", "grad_scaler", "next_epoch", "next_iter", "global_iter",
            "config", "rng"} <= set(ck)
    assert ck["next_epoch"] == 2 and ck["next_iter"] == 0 and ck["global_iter"] == 8
    assert "OUTPUT_DIR: " in ck["config"] and ck["scheduler"]["last_iter"] == 7
    assert (out / "config.yaml").read_text() == ck["config"]
    # observability: JSON lines per logging step and per epoch, curves PNG, TensorBoard events
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"type": "iter"' in ln for ln in lines) == 8 and sum('"type": "epoch"' in ln for ln in lines) == 2
    assert '"val_top1"' in lines[-1]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out / "tb"))
    assert len(res["val"]) == 2


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_rng_state_takes_only_this_process_gpu(monkeypatch):
    """On a GPU machine: the current device's CUDA generator only (get_rng_state_all would open a
    CUDA context on every GPU from every torchrun process). CUDA is faked here."""
    fake = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": fake.clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("touched every GPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, device="cuda": restored.append(t))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda ts: pytest.fail("touched every GPU"))
    state = get_rng_state()
    assert len(state["cuda"]) == 1
    set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], fake)


def test_refuses_folder_with_foreign_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by gcvideo"):
        train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 1), dataset_builder=builder())
    assert (out / "thesis.tex").read_text() == "precious"


def test_changed_config_keeps_previous_copy(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 1), dataset_builder=builder())
    first = (out / "config.yaml").read_text()
    train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 2), dataset_builder=builder())  # resumes, trains epoch 2
    assert (out / "config.1.yaml").read_text() == first
    assert "MAX_EPOCH: 2" in (out / "config.yaml").read_text()
    assert os.path.basename(list_checkpoints(str(out))[-1]) == "checkpoint_epoch0002.pth"


def test_init_from_3d_checkpoint_only_when_not_resuming(tmp_path, capsys):
    from gcvideo.models import build_model

    src_cfg = tiny_cfg(tmp_path / "src", num_classes=5)
    torch.manual_seed(123)
    src = build_model(src_cfg)
    with torch.no_grad():
        src.blocks[0].conv.weight.fill_(0.01)  # recognisable stem
    path = str(tmp_path / "pretrained.pth")
    torch.save(src.state_dict(), path)
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, "SOLVER.BASE_LR", 1e-6, "TRAIN.INIT_FROM", path)
    train(cfg, dataset_builder=builder())
    printed = capsys.readouterr().out
    assert f"initialised from {path}" in printed and "re-initialised" in printed  # 5 -> 4 classes: new head
    stem = load_checkpoint_file(str(out / "checkpoints" / "checkpoint_epoch0001.pth"))["model"]["blocks.0.conv.weight"]
    torch.testing.assert_close(stem, torch.full_like(stem, 0.01), atol=1e-4, rtol=0)
    cfg2 = tiny_cfg(out, "SOLVER.MAX_EPOCH", 2, "SOLVER.BASE_LR", 1e-6, "TRAIN.INIT_FROM", path)
    train(cfg2, dataset_builder=builder())
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "initialised from" not in printed


def test_options_smoke_gc_bf16_channels_last_clip_precise_bn(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, "CONTEXT.TYPE", "gc", "CONTEXT.LOCATION", "all",
                   "TRAIN.MIXED_PRECISION", "bf16", "TRAIN.CHANNELS_LAST", True, "SOLVER.CLIP_GRAD_NORM", 0.5,
                   "TRAIN.PRECISE_BN_BATCHES", 2, "TRAIN.EVAL_PERIOD", 1, "SOLVER.NESTEROV", False)
    res = train(cfg, dataset_builder=builder())
    assert res["global_iter"] == 4 and len(res["val"]) == 1
    ck = load_checkpoint_file(str(out / "checkpoints" / "checkpoint_epoch0001.pth"))
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_precise_bn_averages_batch_statistics():
    from torch.utils.data import DataLoader

    from gcvideo.engine.device_prep import DevicePrep
    from gcvideo.engine.trainer import precise_bn

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm3d(2, momentum=0.1)

        def forward_features(self, x):
            return self.bn(x)

    g = torch.Generator().manual_seed(0)
    clips = [{"video": torch.randn(2, 1, 2, 2, generator=g) * (i + 1) + i} for i in range(12)]
    net = Net()
    used = precise_bn(net, DataLoader(clips, batch_size=4), 2, DevicePrep(torch.device("cpu")), None)
    assert used == 2
    batches = [torch.stack([c["video"] for c in clips[b * 4:(b + 1) * 4]]) for b in range(2)]  # (4, 2, 1, 2, 2)
    means = torch.stack([b.mean((0, 2, 3, 4)) for b in batches]).mean(0)
    vars_ = torch.stack([b.transpose(0, 1).reshape(2, -1).var(1, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(net.bn.running_mean, means)
    torch.testing.assert_close(net.bn.running_var, vars_)
    assert net.bn.momentum == 0.1


def test_a_training_step_reads_values_to_the_host_once(monkeypatch):
    """Every read of a tensor's value on the host (``.item()``, ``float()``, ``bool()``, ``.tolist()``,
    ``.cpu()``, ``.numpy()``) is a device sync on a GPU; a step makes exactly one (the loss, gradient
    norm and flags travel together). The old loop read the loss before backward and the gradient
    norm after it (5 reads a step)."""
    from gcvideo.engine.optim import WarmupCosineSchedule
    from gcvideo.engine.device_prep import DevicePrep
    from gcvideo.engine.trainer import EpochPosition, StepNumerics, train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    batches = [{"video": torch.randn(4, 3, 2, 4, 4), "label": torch.randint(0, 5, (4,))} for _ in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = WarmupCosineSchedule(optimizer, lr=0.1, max_epoch=1, warmup_epochs=0, warmup_start_factor=0.1,
                                    end_factor=0.0, iters_per_epoch=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    reads = []
    for name in ("item", "__float__", "__bool__", "tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    stats = train_one_epoch(model, None, optimizer, schedule, batches, DevicePrep(torch.device("cpu")),
                            EpochPosition(0, 3), StepNumerics(scaler))
    monkeypatch.undo()
    assert stats["iters"] == 3 and math.isfinite(stats["loss"])
    # one .cpu() of the flags a step, then .tolist() of that host copy (no further sync)
    assert reads == ["cpu", "tolist"] * 3, reads


def test_log_names_the_precision_the_step_runs_in(tmp_path, capsys, monkeypatch):
    """"auto" is logged as what it resolved to, not as "auto"."""
    import gcvideo.engine.precision as precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: set())  # no bf16 instructions: auto -> fp32
    train(tiny_cfg(tmp_path / "a", "SOLVER.MAX_EPOCH", 1, "TRAIN.MIXED_PRECISION", "auto"), dataset_builder=builder())
    assert "precision fp32 (auto);" in capsys.readouterr().out
    train(tiny_cfg(tmp_path / "b", "SOLVER.MAX_EPOCH", 1, "TRAIN.MIXED_PRECISION", "bf16"), dataset_builder=builder())
    assert "precision bf16;" in capsys.readouterr().out


def test_cpu_run_sets_and_logs_the_main_process_threads(tmp_path, capsys):
    """TRAIN.CPU_THREADS reaches torch before the first step, and the log says it."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(tiny_cfg(tmp_path / "a", "SOLVER.MAX_EPOCH", 1, "TRAIN.CPU_THREADS", 1), dataset_builder=builder())
        assert torch.get_num_threads() == 1
        assert "; threads: 1 (TRAIN.CPU_THREADS); malloc:" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
