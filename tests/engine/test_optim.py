"""LR schedule (warmup, cosine, linear scaling) and weight-decay groups against hand-computed values."""
import math

import pytest
import torch
import torch.nn as nn

from gcvideo.config import load_cfg
from gcvideo.engine.optim import build_optimizer, build_schedule, param_groups, scaled_lr
from gcvideo.models import build_model


def _cfg(*opts):
    return load_cfg(None, ["MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1,1,1,1]", "MODEL.NUM_CLASSES", "5",
                           "CONTEXT.TYPE", "gc", "CONTEXT.LOCATION", "all", *opts])


def test_defaults_follow_slow_8x8_recipe():
    cfg = load_cfg(None, [])
    s, t = cfg.SOLVER, cfg.TRAIN
    assert (s.BASE_LR, s.REFERENCE_BATCH_SIZE, t.BATCH_SIZE, s.MAX_EPOCH, s.WARMUP_EPOCHS) == (0.1, 64, 64, 196, 34)
    assert (s.MOMENTUM, s.WEIGHT_DECAY, s.ZERO_WD_NORM_BIAS, cfg.MODEL.DROPOUT) == (0.9, 1e-4, True, 0.5)


def test_linear_scaling_with_global_batch():
    assert scaled_lr(0.1, 128, 64) == pytest.approx(0.2)
    assert scaled_lr(0.4, 16, 64) == pytest.approx(0.1)
    # the optimizer gets the scaled LR of the config
    cfg = _cfg("TRAIN.BATCH_SIZE", "16", "SOLVER.BASE_LR", "0.4")
    assert build_optimizer(cfg, build_model(cfg)).param_groups[0]["lr"] == pytest.approx(0.1)


def test_warmup_then_cosine_hand_values():
    # lr = 0.1 * 128 / 64 = 0.2; warmup 2 of 10 epochs from 0.02 to cos(2); cosine to 0
    cfg = _cfg("TRAIN.BATCH_SIZE", "128", "SOLVER.MAX_EPOCH", "10", "SOLVER.WARMUP_EPOCHS", "2",
               "SOLVER.WARMUP_START_FACTOR", "0.1", "SOLVER.COSINE_END_FACTOR", "0.0")
    opt = build_optimizer(cfg, build_model(cfg))
    sched = build_schedule(cfg, opt, iters_per_epoch=4)
    cos2 = 0.2 * (1 + math.cos(math.pi * 2 / 10)) / 2  # 0.18090170
    expected = {0: 0.02, 2: 0.02 + (cos2 - 0.02) * 0.25, 4: 0.02 + (cos2 - 0.02) * 0.5, 8: cos2,
                20: 0.1, 30: 0.2 * (1 + math.cos(math.pi * 7.5 / 10)) / 2, 40: 0.0}
    for it, lr in expected.items():
        assert sched.step(it) == pytest.approx(lr, abs=1e-12)
        assert all(g["lr"] == pytest.approx(lr, abs=1e-12) for g in opt.param_groups)
    assert expected[4] == pytest.approx(0.10045085, abs=1e-8)
    # cosine end factor: floor of the cosine
    cfg2 = _cfg("SOLVER.MAX_EPOCH", "10", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.COSINE_END_FACTOR", "0.01")
    s2 = build_schedule(cfg2, build_optimizer(cfg2, build_model(cfg2)), 1)
    assert s2.step(0) == pytest.approx(0.1) and s2.step(10) == pytest.approx(0.001)
    assert s2.step(5) == pytest.approx(0.001 + 0.099 / 2)


def test_weight_decay_groups():
    cfg = _cfg()
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True and opt.defaults["foreach"] is True
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    for n, p in model.named_parameters():
        mod = model.get_submodule(n.rsplit(".", 1)[0])
        norm = isinstance(mod, (nn.BatchNorm3d, nn.LayerNorm))
        assert (n in no_decay) == (norm or n.endswith(".bias")), n
    assert any(".context." in n and "weight" in n for n in no_decay)  # the GC block's LayerNorm
    assert "blocks.5.proj.weight" in decay and "blocks.5.proj.bias" in no_decay
    # one SGD step on a 2-parameter model: decayed weight vs. undecayed bias, zero gradient
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(3.0)
    opt = torch.optim.SGD(param_groups(lin, 0.5, True), lr=0.1)
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert lin.weight.item() == pytest.approx(2.0 - 0.1 * 0.5 * 2.0) and lin.bias.item() == 3.0
    assert len(param_groups(model, 1e-4, False)) == 1


def test_adamw_step_matches_its_equations_and_unknown_method_is_refused():
    """SOLVER.OPTIMIZING_METHOD adamw: one step on a decayed weight equals the AdamW update written
    out (Loshchilov & Hutter: w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w)) in float64."""
    from gcvideo.config import ConfigError
    cfg = _cfg("SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BASE_LR", "0.004", "TRAIN.BATCH_SIZE", "32",
               "SOLVER.REFERENCE_BATCH_SIZE", "64", "SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.BETAS", "[0.8, 0.99]")
    model = nn.Linear(3, 2).double()
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["foreach"] is True  # one multi-tensor update, on CPUs too
    w0 = model.weight.detach().clone()
    g = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model.weight.grad, model.bias.grad = g.clone(), torch.zeros(2, dtype=torch.float64)
    opt.step()
    lr, b1, b2, eps, wd = 0.002, 0.8, 0.99, 1e-8, 0.05
    m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
    expected = w0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(model.weight.detach(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match=r"SOLVER.OPTIMIZING_METHOD = 'lamb' .*'sgd', 'adamw'"):
        _cfg("SOLVER.OPTIMIZING_METHOD", "lamb")
