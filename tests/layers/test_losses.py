"""The training losses (gcvideo/layers/losses.py) against float64 formulas written out by hand, and the
default criterion against the loop's former ``F.cross_entropy`` call, bit for bit."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcvideo.config import ConfigError, load_cfg
from gcvideo.layers.losses import LOSSES, CrossEntropy, SoftTargetCrossEntropy, build_criterion, smooth_one_hot

N, K = 5, 7


def _logits_labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(N, K, generator=g, dtype=torch.float64), torch.randint(0, K, (N,), generator=g)


def _hand_loss(z, q):
    """mean_n -sum_k q[n, k] log softmax(z[n])_k, in float64 with plain math."""
    total = 0.0
    for zn, qn in zip(z.tolist(), q.tolist()):
        m = max(zn)
        log_norm = m + math.log(sum(math.exp(v - m) for v in zn))
        total += -sum(qk * (zk - log_norm) for zk, qk in zip(zn, qn))
    return total / len(z)


def _hand_targets(labels, e):
    """(1 - e) one-hot + e / K, written element by element."""
    return torch.tensor([[(1 - e) * (k == int(y)) + e / K for k in range(K)] for y in labels], dtype=torch.float64)


def test_smoothed_one_hot_is_the_formula_and_sums_to_one():
    _, y = _logits_labels()
    q = smooth_one_hot(y, K, 0.1, torch.float64)
    torch.testing.assert_close(q, _hand_targets(y, 0.1), rtol=0, atol=1e-15)
    torch.testing.assert_close(q.sum(1), torch.ones(N, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(smooth_one_hot(y, K, 0.0), F.one_hot(y, K).float())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("e", [0.0, 0.1, 0.3])
def test_each_loss_with_label_smoothing_is_minus_sum_q_log_softmax(name, e):
    z, y = _logits_labels(1)
    loss = LOSSES[name](K, e)(z, y)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - _hand_loss(z, _hand_targets(y, e))) < 1e-12


def test_soft_cross_entropy_of_distributions():
    z, _ = _logits_labels(2)
    q = torch.softmax(torch.randn(N, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1)
    loss = SoftTargetCrossEntropy(K, smoothing=0.3)(z, q)  # given distributions are used as they are
    assert abs(loss.item() - _hand_loss(z, q)) < 1e-12
    # its gradient w.r.t. the logits: (softmax(z) - q) / N
    z = z.clone().requires_grad_(True)
    SoftTargetCrossEntropy(K)(z, q).backward()
    p = np.exp(z.detach().numpy()) / np.exp(z.detach().numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(z.grad.numpy(), (p - q.numpy()) / N, rtol=0, atol=1e-15)


def test_default_criterion_is_the_former_call_bit_for_bit():
    """build_criterion(defaults) gives the very loss and gradient of ``F.cross_entropy(logits.float(), y)``."""
    cfg = load_cfg(None, ["MODEL.NUM_CLASSES", str(K)])
    criterion = build_criterion(cfg)
    assert isinstance(criterion, CrossEntropy) and criterion.smoothing == 0.0
    z, y = _logits_labels(4)
    a, b = z.float().clone().requires_grad_(True), z.float().clone().requires_grad_(True)
    la, lb = criterion(a, y), F.cross_entropy(b, y)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(a.grad, b.grad)


def test_config_selects_the_loss_and_refuses_unknown_ones():
    cfg = load_cfg(None, ["MODEL.NUM_CLASSES", str(K), "MODEL.LOSS", "soft_cross_entropy",
                          "TRAIN.LABEL_SMOOTHING", "0.2"])
    criterion = build_criterion(cfg)
    assert isinstance(criterion, SoftTargetCrossEntropy) and criterion.smoothing == 0.2
    assert criterion.num_classes == K
    with pytest.raises(ConfigError, match=r"MODEL.LOSS = 'focal'.*'cross_entropy', 'soft_cross_entropy'"):
        load_cfg(None, ["MODEL.LOSS", "focal"])
    with pytest.raises(ConfigError, match=r"TRAIN.LABEL_SMOOTHING = 1.0 .*\[0, 1\)"):
        load_cfg(None, ["TRAIN.LABEL_SMOOTHING", "1.0"])


def test_a_loss_added_to_losses_alone_is_accepted_by_the_config(monkeypatch):
    """Adding a loss is one file: its class (with ``soft_targets``) and its name in ``LOSSES``; the
    config's MODEL.LOSS and Mixup checks read both from there."""
    class Bce(SoftTargetCrossEntropy):  # a soft-target loss the config has never heard of
        pass

    monkeypatch.setitem(LOSSES, "bce", Bce)
    on = ["MODEL.NUM_CLASSES", str(K), "MIXUP.ENABLE", "True", "MODEL.LOSS", "bce"]
    assert isinstance(build_criterion(load_cfg(None, on)), Bce)
    monkeypatch.setattr(Bce, "soft_targets", False)  # class indices only: refused with Mixup
    with pytest.raises(ConfigError, match=r"MODEL.LOSS = 'bce' .*'soft_cross_entropy' with MIXUP.ENABLE"):
        load_cfg(None, on)
    assert [n for n, c in LOSSES.items() if c.soft_targets] == ["soft_cross_entropy"]
