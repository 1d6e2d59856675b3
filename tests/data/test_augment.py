"""Clip augmentation (gcvideo.data.augment, config section AUG): one draw of RandAugment and of the
erased box per clip, applied to every frame; draws from the item's own stream (reproducible, resume);
off by default; time-reversed pairs share their anchor's augmentation."""
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from gcvideo.config import ConfigError, get_cfg, validate_cfg
from gcvideo.data import build_dataset
from gcvideo.data.augment import ClipRandAugment, ClipRandomErasing, build_train_transform, mean_fill
from test_dataset import _collect, toy_cfg

RA = {"AUG.RAND_AUGMENT": True, "AUG.RAND_AUGMENT_N": 2, "AUG.RAND_AUGMENT_M": 9}
RE = {"AUG.RE_PROB": 1.0}


def _clip(t=4, size=40, seed=0, high=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (t, 3, size, size), dtype=torch.uint8, generator=g)  # (T, 3, H, W)


# -- RandAugment --------------------------------------------------------------------
def test_rand_augment_applies_one_draw_to_every_frame(monkeypatch):
    """Each op torchvision draws is applied once, to the T frames together, with one magnitude; frame t of the
    clip is what torchvision's RandAugment (same seed) makes of frame t alone; identical frames stay identical."""
    ra = ClipRandAugment(num_ops=2, magnitude=9, fill=(115, 115, 115))
    calls = []
    real = ra.op._apply_image_or_video_transform

    def spy(image, name, magnitude, **kw):
        calls.append((tuple(image.shape), name, magnitude))
        return real(image, name, magnitude, **kw)

    clip = _clip()
    changed, names = 0, set()
    for seed in range(40):
        monkeypatch.setattr(ra.op, "_apply_image_or_video_transform", spy)
        calls.clear()
        out = ra.apply(clip, seed)
        assert [c[0] for c in calls] == [(4, 3, 40, 40)] * 2  # two ops, each on the whole clip
        names.update(c[1] for c in calls)
        monkeypatch.undo()
        ref = v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11, fill=[115] * 3,
                             interpolation=v2.InterpolationMode.BILINEAR)
        for t in range(4):
            torch.manual_seed(seed)
            assert torch.equal(out[t], ref(clip[t:t + 1])[0]), (seed, t)
        same = ra.apply(clip[:1].expand(4, -1, -1, -1).contiguous(), seed)
        assert all(torch.equal(same[0], same[t]) for t in range(1, 4))
        assert out.shape == clip.shape and out.dtype == torch.uint8
        changed += not torch.equal(out, clip)
    assert changed >= 30 and len(names) >= 8  # it does augment, with many different ops


def test_rand_augment_leaves_the_global_torch_rng_alone():
    ra = ClipRandAugment(2, 9)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    ra(_clip(), np.random.default_rng(0))
    assert torch.equal(torch.rand(5), expected)
    # the clip depends on the numpy draw only
    a, b = ra(_clip(), np.random.default_rng(7)), ra(_clip(), np.random.default_rng(7))
    assert torch.equal(a, b)
    assert any(not torch.equal(a, ra(_clip(), np.random.default_rng(s))) for s in range(8, 12))


def test_rand_augment_magnitude_bounds():
    with pytest.raises(ValueError, match="magnitude = 11"):
        ClipRandAugment(2, 11)


# -- random erasing -----------------------------------------------------------------
def _replayed_box(seed, height, width, prob):
    """The erased box by the documented draws (module docstring), computed here by hand."""
    r = np.random.default_rng(seed)
    if r.random() >= prob:
        return None
    for _ in range(10):
        area = r.uniform(0.02, 1 / 3) * height * width
        aspect = math.exp(r.uniform(math.log(0.3), math.log(1 / 0.3)))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < h < height and 0 < w < width:
            return r.integers(0, height - h + 1), r.integers(0, width - w + 1), h, w, area
    return None


def test_random_erasing_one_box_on_every_frame_of_the_drawn_area():
    fill = mean_fill([0.45, 0.5, 0.55])
    assert fill == (115, 128, 140)
    re = ClipRandomErasing(1.0, fill)
    clip = _clip(t=5, size=48, high=100)[..., :40]  # (5, 3, 48, 40), values < 100: no pixel has the fill
    before = clip.clone()
    for seed in range(30):
        out = re(clip, np.random.default_rng(seed))
        assert torch.equal(clip, before)  # the input (maybe a view of shared frames) is not written
        top, left, h, w, area = _replayed_box(seed, 48, 40, 1.0)
        assert abs(h * w - area) <= h + w + 1  # the drawn area, up to rounding the sides
        assert 0.02 * 48 * 40 - 48 <= h * w <= 48 * 40 / 3 + 48
        changed = (out != clip).any(1)  # (T, H, W)
        for t in range(5):
            assert torch.equal(changed[t], changed[0])  # the same box on every frame
        rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (top, top + h, left, left + w)
        assert int(changed[0].sum()) == h * w
        box = out[..., top:top + h, left:left + w]  # (T, 3, h, w)
        assert torch.equal(box, torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).expand_as(box))


def test_random_erasing_probability():
    re = ClipRandomErasing(0.25)
    clip = _clip(t=2, size=24)
    erased = sum(not torch.equal(re(clip, np.random.default_rng(s)), clip) for s in range(400))
    assert erased == sum(_replayed_box(s, 24, 24, 0.25) is not None for s in range(400))
    assert 70 <= erased <= 130  # binomial(400, 0.25): 100 +- 3 sd
    assert torch.equal(ClipRandomErasing(0.0)(clip, np.random.default_rng(0)), clip)


# -- in the dataset -----------------------------------------------------------------
def test_off_by_default():
    cfg = get_cfg()
    assert not cfg.AUG.RAND_AUGMENT and cfg.AUG.RE_PROB == 0.0
    assert build_train_transform(cfg) is None


def test_augmentation_draws_from_the_items_own_stream(tiny_toy):
    """The item is the unaugmented item (same crops and flips: the augmentation has its own stream 2)
    with RandAugment seeded from default_rng([SEED, epoch, index, attempt, 2]), then the erased box."""
    over = {"DATA.REVERSE_PROB": 0.5}
    plain = build_dataset(toy_cfg(tiny_toy, **over), "train")
    aug = build_dataset(toy_cfg(tiny_toy, **over, **RA, **RE), "train")
    assert plain.transform.augment is None
    ra = ClipRandAugment(2, 9, mean_fill(plain.transform.mean))
    fill = torch.tensor(mean_fill(plain.transform.mean), dtype=torch.uint8).view(3, 1, 1, 1)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        aug.set_epoch(epoch)
        for i in (0, 3, 9):
            p, a = plain[i], aug[i]
            assert a["label"] == p["label"] and a["video"].dtype == torch.uint8
            r = np.random.default_rng([0, epoch, i, 0, 2])
            ref = ra.apply(p["video"].permute(1, 0, 2, 3), int(r.integers(2 ** 63))).permute(1, 0, 2, 3)
            top, left, h, w = ClipRandomErasing(1.0).draw_box(40, 40, r)
            ref = ref.clone()
            ref[..., top:top + h, left:left + w] = fill  # (3, T, h, w)
            assert torch.equal(a["video"], ref)
            assert not torch.equal(a["video"], p["video"])


def test_augmented_items_reproducible_in_workers(tiny_toy):
    """Same (seed, epoch, index) -> same augmented clip in a fresh dataset and in DataLoader workers."""
    cfg = toy_cfg(tiny_toy, **RA, **{"AUG.RE_PROB": 0.5})
    ds = build_dataset(cfg, "train")
    ref = _collect(DataLoader(ds, batch_size=4, num_workers=0))
    again = build_dataset(cfg, "train")
    assert all(torch.equal(again[i]["video"], ref[i][0]) for i in (1, 7))
    got = _collect(DataLoader(ds, batch_size=3, num_workers=2, shuffle=True,
                              generator=torch.Generator().manual_seed(0)))
    assert sorted(got) == list(range(16))
    assert all(torch.equal(video, ref[i][0]) and label == ref[i][1] for i, (video, label) in got.items())
    other = build_dataset(toy_cfg(tiny_toy, SEED=5, **RA, **{"AUG.RE_PROB": 0.5}), "train")
    assert not torch.equal(other[1]["video"], ref[1][0])


def test_pair_reversed_clip_gets_its_anchors_augmentation(tiny_toy):
    """DATA.PAIR_REVERSED: clip 2i+1 is clip 2i (augmented) reversed in time: the same RandAugment ops and
    the same erased box; clips 0 and 2 have their own draws."""
    from gcvideo.data.toy import REVERSE_PAIRS

    over = {"DATA.NUM_SAMPLES": 4, "DATA.PAIR_REVERSED": True, "DATA.REVERSE_LABEL_PAIRS": REVERSE_PAIRS,
            "DATA.TRAIN_UINT8": False}
    plain = build_dataset(toy_cfg(tiny_toy, **over), "train")
    aug = build_dataset(toy_cfg(tiny_toy, **over, **RA, **RE), "train")
    for i in range(4):
        p, a = plain[i], aug[i]
        v = a["video"]  # (4, 3, T, H, W) float32
        assert torch.equal(a["label"], p["label"])
        for k in (0, 2):
            assert torch.equal(v[k + 1], v[k].flip(1))  # dim 1 of (3, T, H, W) is time
            assert not torch.equal(v[k], p["video"][k])
        assert not torch.equal(v[0], v[2])


@pytest.mark.parametrize("key,value,pattern", [
    ("RAND_AUGMENT_M", 11, r"AUG\.RAND_AUGMENT_M = 11 .*0\.\.10"),
    ("RAND_AUGMENT_N", 0, r"AUG\.RAND_AUGMENT_N = 0 .*positive"),
    ("RE_PROB", 1.5, r"AUG\.RE_PROB = 1\.5 .*\[0, 1\]"),
])
def test_config_checks(key, value, pattern):
    cfg = get_cfg()
    cfg.AUG[key] = value
    with pytest.raises(ConfigError, match=pattern):
        validate_cfg(cfg, check_files=False)


def test_uint8_augmented_items_normalise_to_the_float_items(tiny_toy):
    """The augmentation acts on the uint8 clip: DATA.TRAIN_UINT8 items still normalise to the float32 items."""
    from gcvideo.data.transforms import normalize_views

    over = {**RA, "AUG.RE_PROB": 0.5, "DATA.NUM_SAMPLES": 2, "DATA.MEAN": [0.43, 0.45, 0.47]}
    small = build_dataset(toy_cfg(tiny_toy, **over), "train")
    full = build_dataset(toy_cfg(tiny_toy, **over, **{"DATA.TRAIN_UINT8": False}), "train")
    for i in (2, 6):
        a, b = small[i], full[i]
        assert a["video"].dtype == torch.uint8 and a["video"].shape == (2, 3, 4, 40, 40)
        assert torch.equal(normalize_views(a["video"], over["DATA.MEAN"], [0.225] * 3), b["video"])


def test_augmented_training_resumes_bit_exact(tiny_toy, tmp_path):
    """RandAugment and random erasing in the main process (DATA.NUM_WORKERS 0, dropout on): a run resumed from
    a mid-epoch checkpoint ends with the weights of the uninterrupted run."""
    import shutil
    from gcvideo.engine import train
    from gcvideo.utils.io import load_checkpoint_file

    def cfg_for(out):
        cfg = toy_cfg(tiny_toy, **RA, **{"AUG.RE_PROB": 0.5, "DATA.TRAIN_JITTER_SCALES": [32, 40],
                                         "DATA.TRAIN_CROP_SIZE": 32})
        cfg.merge_from_list(["OUTPUT_DIR", str(out), "MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]",
                             "TRAIN.BATCH_SIZE", "4", "TRAIN.CHANNELS_LAST", "False", "TRAIN.TEST_AT_END", "False",
                             "TRAIN.EVAL_PERIOD", "0", "TRAIN.DETERMINISTIC", "True", "TRAIN.CHECKPOINT_ITERS", "2",
                             "TRAIN.KEEP_LAST", "10", "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_EPOCHS", "1.0",
                             "SOLVER.REFERENCE_BATCH_SIZE", "4", "DEVICE", "cpu", "MODEL.DROPOUT", "0.5"])
        return cfg

    torch.set_num_threads(1)
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg_for(a))
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "config.yaml", b / "config.yaml")
    shutil.copy(a / "checkpoints" / "checkpoint_epoch0002_iter000002.pth", b / "checkpoints")
    train(cfg_for(b))
    final_a = load_checkpoint_file(str(a / "checkpoints" / "checkpoint_epoch0002.pth"))
    final_b = load_checkpoint_file(str(b / "checkpoints" / "checkpoint_epoch0002.pth"))
    assert final_a["global_iter"] == final_b["global_iter"] == 8
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
