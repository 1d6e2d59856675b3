"""Mixup / CutMix of training clips (gcvideo/data/mixup.py): mixed clips and targets against formulas
computed here in float64, a fixed CutMix box by hand, reproducible draws, time-reversal pairs kept,
and the MIXUP.* config checks."""
import numpy as np
import pytest
import torch

from gcvideo.config import ConfigError, load_cfg
from gcvideo.data.mixup import ClipMixup, MixDraw, build_mixup, mix_batch

N, C, T, H, W, K = 6, 3, 4, 8, 10, 5


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, T, H, W, generator=g), torch.tensor([0, 3, 1, 4, 2, 3])


def _q(labels, e):
    """Smoothed one-hot targets written out: 1 - e + e/K at the label, e/K elsewhere (float64)."""
    return np.array([[(1 - e + e / K) if k == y else e / K for k in range(K)] for y in labels.tolist()])


def test_mixup_is_lam_x_plus_one_minus_lam_x_flipped():
    x, y = _batch()
    mixup = ClipMixup(K, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, seed=3)
    draw = mixup.draw(H, W, epoch=2, it=5)
    assert draw.box is None and 0.0 < draw.lam < 1.0
    out, targets = mixup(x, y, epoch=2, it=5)
    lam, xd = draw.lam, x.double().numpy()
    want = lam * xd + (1 - lam) * xd[::-1]  # row i with row N-1-i
    np.testing.assert_allclose(out.double().numpy(), want, rtol=0, atol=1e-6)
    q = _q(y, 0.1)
    np.testing.assert_allclose(targets.double().numpy(), lam * q + (1 - lam) * q[::-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets.sum(1).numpy(), np.ones(N), rtol=0, atol=1e-6)


def test_cutmix_of_a_fixed_box_in_every_frame_and_targets_the_area_fraction():
    x, y = _batch(1)
    box = (2, 6, 3, 8)  # rows 2..5, columns 3..7: 4 x 5 = 20 of the 8 x 10 = 80 pixels
    draw = MixDraw.cutmix(box, H, W)
    assert draw.lam == 1 - 20 / 80 == 0.75
    out, targets = mix_batch(x, y, draw, K, smoothing=0.0)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[2:6, 3:8] = True
    for n in range(N):
        for t in range(T):  # every frame: the partner's pixels inside the box, its own outside
            assert torch.equal(out[n, :, t][:, inside], x[N - 1 - n, :, t][:, inside])
            assert torch.equal(out[n, :, t][:, ~inside], x[n, :, t][:, ~inside])
    q = _q(y, 0.0)
    np.testing.assert_allclose(targets.double().numpy(), 0.75 * q + 0.25 * q[::-1], rtol=0, atol=1e-7)
    assert np.allclose(targets.sum(1).numpy(), 1.0)
    assert not torch.equal(out, x) and torch.equal(x, _batch(1)[0])  # a new tensor; the input is unchanged


def test_drawn_cutmix_boxes_and_their_lam():
    mixup = ClipMixup(K, mixup_alpha=0.0, cutmix_alpha=1.0, seed=0)
    x, y = _batch(2)
    for it in range(50):
        draw = mixup.draw(H, W, epoch=0, it=it)
        y0, y1, x0, x1 = draw.box
        assert 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W
        assert abs(draw.lam - (1 - (y1 - y0) * (x1 - x0) / (H * W))) < 1e-12
        out, targets = mixup(x, y, epoch=0, it=it)
        changed = (out != x).any(dim=(0, 1, 2))  # (H, W): pixels taken from the partner
        assert not changed[:y0].any() and not changed[y1:].any() and not changed[:, :x0].any() \
            and not changed[:, x1:].any()
        assert torch.allclose(targets.sum(1), torch.ones(N))


def test_draws_are_reproducible_per_step_and_independent_of_global_rngs():
    a = ClipMixup(K, seed=7, rank=1)
    torch.manual_seed(123)
    np.random.seed(123)
    first = [a.draw(H, W, e, i) for e in range(2) for i in range(20)]
    torch.manual_seed(5)
    np.random.seed(5)
    b = ClipMixup(K, seed=7, rank=1)
    assert [b.draw(H, W, e, i) for e in range(2) for i in range(20)] == first  # a resumed run: the same draws
    lams = [ClipMixup(K, cutmix_alpha=0.0, seed=7).draw(H, W, e, i).lam for e in range(2) for i in range(20)]
    assert len(set(lams)) == len(lams)  # a new draw each step (mixup's lam is continuous)
    assert first[:5] != [ClipMixup(K, seed=7, rank=0).draw(H, W, 0, i) for i in range(5)]  # ranks differ
    assert first[:5] != [ClipMixup(K, seed=8, rank=1).draw(H, W, 0, i) for i in range(5)]  # seeds differ
    assert {d.box is None for d in first} == {True, False}  # SWITCH_PROB 0.5: both kinds


@pytest.mark.parametrize("prob,switch,kinds", [(0.0, 0.5, {"none"}), (1.0, 0.0, {"mixup"}), (1.0, 1.0, {"cutmix"})])
def test_prob_and_switch_prob(prob, switch, kinds):
    mixup = ClipMixup(K, mixup_alpha=0.8, cutmix_alpha=1.0, prob=prob, switch_prob=switch, label_smoothing=0.2)
    draws = [mixup.draw(H, W, 0, i) for i in range(40)]
    assert {"none" if d == MixDraw() else "mixup" if d.box is None else "cutmix" for d in draws} == kinds
    if kinds == {"none"}:  # not mixed: the clips themselves, targets the smoothed one-hot
        x, y = _batch()
        out, targets = mixup(x, y, epoch=0, it=0)
        assert out is x
        np.testing.assert_allclose(targets.double().numpy(), _q(y, 0.2), rtol=0, atol=1e-7)


@pytest.mark.parametrize("cutmix", [False, True])
def test_pair_reversed_pairs_stay_pairs(cutmix):
    """Rows 2i+1 = rows 2i reversed in time (DATA.PAIR_REVERSED) with labels through a reverse map:
    after mixing, row 2i+1 is still row 2i reversed, and its target the reverse-mapped target."""
    reverse = [1, 0, 3, 2, 4]  # class c reversed in time is class reverse[c]
    x, _ = _batch(4)
    x[1::2] = x[0::2].flip(2)  # (N, C, T, H, W): flip T
    y = torch.tensor([0, 1, 2, 3, 4, 4])
    mixup = ClipMixup(K, mixup_alpha=0.0 if cutmix else 0.8, cutmix_alpha=1.0 if cutmix else 0.0, seed=1)
    draw = mixup.draw(H, W, 0, 3)
    assert 0 < draw.lam < 1 and (draw.box is not None) == cutmix
    out, targets = mixup(x, y, epoch=0, it=3)
    assert torch.equal(out[1::2], out[0::2].flip(2))
    assert torch.equal(targets[1::2], targets[0::2][:, reverse])


def test_config_builds_it_only_when_enabled_and_refuses_what_cannot_work():
    assert build_mixup(load_cfg(None, [])) is None  # off by default
    on = ["MIXUP.ENABLE", "True", "MODEL.LOSS", "soft_cross_entropy", "MODEL.NUM_CLASSES", str(K)]
    m = build_mixup(load_cfg(None, on + ["SEED", "4", "MIXUP.CUTMIX_ALPHA", "0.0"]), rank=2)
    assert (m.num_classes, m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob, m.label_smoothing, m.seed,
            m.rank) == (K, 0.8, 0.0, 1.0, 0.5, 0.1, 4, 2)
    cases = [(["MIXUP.ENABLE", "True"], r"MODEL.LOSS = 'cross_entropy'.*'soft_cross_entropy' with MIXUP.ENABLE"),
             (on + ["TRAIN.LABEL_SMOOTHING", "0.1"], r"TRAIN.LABEL_SMOOTHING = 0.1 .*MIXUP.LABEL_SMOOTHING"),
             (on + ["MIXUP.ALPHA", "0.0", "MIXUP.CUTMIX_ALPHA", "0.0"], r"MIXUP.ENABLE = True .*set one of them"),
             (on + ["TRAIN.BATCH_SIZE", "1"], r"MIXUP.ENABLE = True .*1 clip per process"),
             (["MIXUP.PROB", "1.5"], r"MIXUP.PROB = 1.5 .*\[0, 1\]"),
             (["MIXUP.ALPHA", "-1.0"], r"MIXUP.ALPHA = -1.0 .*Beta"),
             (["MIXUP.LABEL_SMOOTHING", "1.0"], r"MIXUP.LABEL_SMOOTHING = 1.0 .*\[0, 1\)")]
    for opts, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_cfg(None, opts)
    # one video a step but two clips of it (DATA.NUM_SAMPLES 2): two rows to mix
    assert build_mixup(load_cfg(None, on + ["TRAIN.BATCH_SIZE", "1", "DATA.NUM_SAMPLES", "2"])) is not None
