"""Datasets: item contract, augmentations with label mapping, determinism per (seed, epoch, index),
DataLoader workers, DistributedSampler, multi-view test items decoded once."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import data_helpers as H
from gcvideo.config import get_cfg, validate_cfg
from gcvideo.data import build_dataset, build_views_dataset
from gcvideo.data import clip_transforms as CT
from gcvideo.data import dataset as DS
from gcvideo.data import decoder as DEC
from gcvideo.data.sampling import train_clip_indices
from gcvideo.data.transforms import crop_offsets, make_views, normalize_views, short_side_size


def _patch_open(monkeypatch, open_video):
    """The dataset's decoder opens files with ``open_video(path, backend, threads, device)``."""
    monkeypatch.setattr(DEC.DecodeOptions, "open", lambda self, path: open_video(path, self.decoder, self.threads,
                                                                                  self.device))


def toy_cfg(toy_dir, **over):
    cfg = get_cfg()
    cfg.MODEL.NUM_CLASSES = 8
    d = cfg.DATA
    d.PATH_TO_DATA_DIR = toy_dir
    d.LABEL_MAP = os.path.join(toy_dir, "classes.txt")
    d.TEST_FILE = "val.csv"
    d.NUM_FRAMES, d.SAMPLING_RATE = 4, 4
    d.TRAIN_JITTER_SCALES, d.TRAIN_CROP_SIZE, d.TEST_CROP_SIZE = [48, 60], 40, 48
    d.NUM_WORKERS = 0
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 2, 3
    for k, v in over.items():
        node = cfg
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    validate_cfg(cfg)
    return cfg


def test_train_item_contract(tiny_toy):
    ds = build_dataset(toy_cfg(tiny_toy, **{"DATA.TRAIN_UINT8": False}), "train")
    assert len(ds) == 16
    item = ds[3]
    assert set(item) == {"video", "label", "index", "path", "ok", "error", "skipped"}
    v = item["video"]
    assert v.shape == (3, 4, 40, 40) and v.dtype == torch.float32 and v.is_contiguous()
    assert item["ok"] is True and item["error"] == "" and item["skipped"] == ""
    assert item["index"] == 3 and item["path"].endswith("videos/train/000003.mp4")
    # normalised with mean 0.45, std 0.225: pixel range [0, 255] -> [-2, 2.44]
    assert v.min() >= -2.0 - 1e-5 and v.max() <= (1 - 0.45) / 0.225 + 1e-5
    assert ds.video_shape() == (3, 4, 40, 40)


def test_val_and_test_views(tiny_toy):
    cfg = toy_cfg(tiny_toy)
    val = build_dataset(cfg, "val")  # TRAIN.EVAL_VIEWS = [1, 1] -> one 4-D view
    item = val[2]
    assert item["video"].shape == (3, 4, 48, 48) and item["label"] == 2 and item["ok"]
    test = build_dataset(cfg, "test")  # 2 clips x 3 crops
    item = test[2]
    assert item["video"].shape == (6, 3, 4, 48, 48) and item["ok"] and item["index"] == 2
    val3 = build_dataset(toy_cfg(tiny_toy, **{"TRAIN.EVAL_VIEWS": [3, 1]}), "val")
    assert val3[0]["video"].shape == (3, 3, 4, 48, 48)
    # deterministic: the same views every time
    torch.testing.assert_close(test[2]["video"], item["video"], rtol=0, atol=0)


def test_views_dataset_gives_the_test_split_items(tiny_toy):
    """build_views_dataset on the test split's files: the test items of build_dataset (float32), label -1,
    with the views asked for instead of TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS."""
    cfg = toy_cfg(tiny_toy, **{"DATA.EVAL_UINT8": False, "DATA.TARGET_FPS": 25, "SEED": 3,
                               "DATA.MEAN": [0.4, 0.5, 0.6], "DATA.STD": [0.2, 0.25, 0.3]})
    test = build_dataset(cfg, "test")  # 2 clips x 3 crops
    paths = [test.records[i].path for i in (2, 0)]
    views = build_views_dataset(cfg, paths, 2, 3)
    for j, i in enumerate((2, 0)):
        a, b = views[j], test[i]
        assert a["ok"] and a["label"] == -1 and a["path"] == b["path"] and a["index"] == j
        assert a["video"].dtype == torch.float32 and a["video"].shape == (6, 3, 4, 48, 48)
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)
    one = build_views_dataset(cfg, paths[:1], 1, 1)[0]["video"]  # one view: still (V, 3, T, S, S)
    assert one.shape == (1, 3, 4, 48, 48)
    # the uint8 test items (DATA.EVAL_UINT8) do not change the views dataset: float32 for the model
    cfg.DATA.EVAL_UINT8 = True
    assert build_views_dataset(cfg, paths[:1], 2, 3)[0]["video"].dtype == torch.float32


def test_same_seed_epoch_index_same_clip(tiny_toy):
    ds = build_dataset(toy_cfg(tiny_toy), "train")
    a = ds[5]["video"]
    ds2 = build_dataset(toy_cfg(tiny_toy), "train")
    torch.testing.assert_close(ds2[5]["video"], a, rtol=0, atol=0)
    ds2.set_epoch(1)
    assert ds2.epoch == 1 and not torch.equal(ds2[5]["video"], a)
    ds3 = build_dataset(toy_cfg(tiny_toy, SEED=7), "train")
    assert not torch.equal(ds3[5]["video"], a)


def _collect(loader):
    out = {}
    for batch in loader:
        for i, idx in enumerate(batch["index"].tolist()):
            out[idx] = (batch["video"][i], int(batch["label"][i]))
    return out


def test_dataloader_two_workers_matches_single_process(tiny_toy):
    """Same (seed, epoch, index) -> same clip whatever the workers; persistent workers see set_epoch."""
    ds = build_dataset(toy_cfg(tiny_toy, **{"DATA.REVERSE_PROB": 0.5}), "train")
    ref = {e: None for e in (0, 1)}
    for e in ref:
        ds.set_epoch(e)
        ref[e] = _collect(DataLoader(ds, batch_size=4, num_workers=0))
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=True, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    for e in (0, 1):
        ds.set_epoch(e)
        got = _collect(loader)
        assert sorted(got) == list(range(16))
        for idx, (video, label) in got.items():
            assert label == ref[e][idx][1]
            torch.testing.assert_close(video, ref[e][idx][0], rtol=0, atol=0)
    assert any(not torch.equal(ref[0][i][0], ref[1][i][0]) for i in range(16))


def test_distributed_sampler_shards(tiny_toy):
    ds = build_dataset(toy_cfg(tiny_toy), "val")
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        for batch in DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0):
            seen += batch["index"].tolist()
            assert batch["video"].shape[1:] == (3, 4, 48, 48)
    assert sorted(seen) == list(range(8))


def test_flip_maps_labels_and_mirrors(tiny_toy):
    pairs = [[0, 1], [1, 0], [4, 5], [5, 4]]
    flip = build_dataset(toy_cfg(tiny_toy, **{"DATA.FLIP_LABEL_PAIRS": pairs}), "train")
    plain = build_dataset(toy_cfg(tiny_toy, **{"DATA.RANDOM_FLIP": False}), "train")
    flipped = 0
    for i in range(16):
        a, b = flip[i], plain[i]
        assert b["label"] == i % 8
        if torch.equal(a["video"], b["video"]):
            assert a["label"] == b["label"]
        else:  # same draws before the flip: the flipped clip is the mirror image
            torch.testing.assert_close(a["video"], b["video"].flip(-1), rtol=0, atol=0)
            assert a["label"] == {0: 1, 1: 0, 4: 5, 5: 4}.get(b["label"], b["label"])
            flipped += 1
    assert 3 <= flipped <= 13


def test_time_reversal_maps_labels(tiny_toy):
    pairs = [[0, 1], [1, 0], [2, 3], [3, 2], [4, 5], [5, 4], [6, 7], [7, 6]]
    kw = {"DATA.RANDOM_FLIP": False, "DATA.REVERSE_LABEL_PAIRS": pairs}
    rev = build_dataset(toy_cfg(tiny_toy, **kw, **{"DATA.REVERSE_PROB": 1.0}), "train")
    fwd = build_dataset(toy_cfg(tiny_toy, **kw), "train")
    for i in (0, 3, 6):
        a, b = rev[i], fwd[i]
        torch.testing.assert_close(a["video"], b["video"].flip(1), rtol=0, atol=0)  # (3, T, H, W): T reversed
        assert a["label"] == {0: 1, 3: 2, 6: 7}[i]


def test_train_crop_jitter_scale(tiny_toy):
    from gcvideo.data.transforms import train_crop_box
    rng = np.random.default_rng(0)
    # 256-px short side scaled to 320: a 224 crop covers round(224 * 256 / 320) = 179 source pixels
    top, left, side = train_crop_box(256, 340, 320, 224, rng)
    assert side == 179 and 0 <= top <= 256 - 179 and 0 <= left <= 340 - 179
    assert train_crop_box(256, 340, 256, 224, rng)[2] == 224


def test_crop_offsets_landscape_and_portrait():
    assert short_side_size(256, 340, 256) == (256, 340)
    assert short_side_size(240, 320, 256) == (256, 341)
    assert short_side_size(320, 180, 256) == (455, 256)
    assert crop_offsets(256, 340, 256, 3) == [(0, 0), (0, 42), (0, 84)]  # left, centre, right
    assert crop_offsets(455, 256, 256, 3) == [(0, 0), (99, 0), (199, 0)]  # top, centre, bottom
    assert crop_offsets(256, 340, 256, 1) == [(0, 42)]


def test_make_views_content():
    """Each view is its clip's frames, resized once, cropped at the documented offsets, normalised."""
    k, h, w = 3, 20, 30
    frames = np.zeros((k, h, w, 3), dtype=np.uint8)
    for i in range(k):
        frames[i] = (np.arange(w, dtype=np.uint8)[None, :, None] * 8 + i)  # value = 8 * column + frame
    views = make_views(frames, [[0, 1], [2, 2]], size=20, num_crops=3, mean=[0, 0, 0], std=[1 / 255] * 3)
    assert views.shape == (6, 3, 2, 20, 20)
    # no resize needed (short side 20): crop columns 0.., 5.., 10..
    for ci, rows in enumerate([[0, 1], [2, 2]]):
        for oi, left in enumerate((0, 5, 10)):
            v = views[ci * 3 + oi]
            for t, r in enumerate(rows):
                expect = torch.from_numpy(frames[r, :, left:left + 20, :].astype(np.float32)).permute(2, 0, 1)
                torch.testing.assert_close(v[:, t], expect, rtol=0, atol=1e-3)


@pytest.mark.parametrize("split", ["val", "test"])
def test_uint8_eval_items_normalise_to_the_float_items(files_dir, tmp_path, split, broken):
    """DATA.EVAL_UINT8 (default): uint8 views, 4x smaller; normalize_views gives the float32 items bit for bit."""
    csv = tmp_path / f"{split}.csv"
    csv.write_text(f"{os.path.join(files_dir, 'demo.mp4')} 6\n{broken['empty']} 1\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.DATA.MEAN, cfg.DATA.STD = [0.43, 0.45, 0.47], [0.22, 0.225, 0.23]
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TRAIN.EVAL_VIEWS = 2, [2, 3]
    assert cfg.DATA.EVAL_UINT8
    small = build_dataset(cfg, split)
    cfg.DATA.EVAL_UINT8 = False
    full = build_dataset(cfg, split)
    a, b = small[0], full[0]
    assert a["video"].dtype == torch.uint8 and b["video"].dtype == torch.float32
    assert a["video"].shape == b["video"].shape == (6, 3, 8, 256, 256)
    assert torch.equal(normalize_views(a["video"], cfg.DATA.MEAN, cfg.DATA.STD), b["video"])
    assert torch.equal(normalize_views(a["video"][None], cfg.DATA.MEAN, cfg.DATA.STD), b["video"][None])  # batched
    # a failed video: zeros of the same dtype and shape, marked not ok
    fa, fb = small[1], full[1]
    assert not fa["ok"] and fa["video"].dtype == torch.uint8 and fa["video"].shape == fb["video"].shape
    with pytest.raises(TypeError, match="uint8"):
        normalize_views(b["video"], cfg.DATA.MEAN, cfg.DATA.STD)


def test_test_item_decodes_once(files_dir, tmp_path, monkeypatch):
    """30 views of a real Kinetics clip: one open, one read of the union of the 10 clips' frames."""
    csv = tmp_path / "test.csv"
    csv.write_text(f"{os.path.join(files_dir, 'demo.mp4')} 6\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    opens, reads = [], []
    real_open = DEC.open_video

    def spy_open(path, backend, threads, *args, **kwargs):
        r = real_open(path, backend, threads, *args, **kwargs)
        real_read = r.read
        opens.append(path)

        def spy_read(indices, *args, **kwargs):
            reads.append(list(indices))
            return real_read(indices, *args, **kwargs)
        r.read = spy_read
        return r

    _patch_open(monkeypatch, spy_open)
    ds = build_dataset(cfg, "test")
    item = ds[0]
    assert item["video"].shape == (30, 3, 8, 256, 256) and item["ok"] and item["label"] == 6
    assert len(opens) == 1 and len(reads) == 1
    # demo.mp4: 280 frames at 28 fps: step 8 * 28 / 30 = 7.467, M = floor(280 - 59.73) = 220,
    # starts floor(i * 220 / 9 + 0.5) = 0, 24, 49, 73, 98, 122, 147, 171, 196, 220
    steps = [0, 7, 14, 22, 29, 37, 44, 52]  # floor(k * 7.467)
    starts = [0, 24, 49, 73, 98, 122, 147, 171, 196, 220]
    assert reads[0] == sorted({a + s for a in starts for s in steps})


@pytest.mark.parametrize("fps,n,clips", [
    (25, 250, [[0, 6, 13, 20, 26, 33, 40, 46], [196, 202, 209, 216, 222, 229, 236, 242]]),
    (30, 300, [[0, 8, 16, 24, 32, 40, 48, 56], [236, 244, 252, 260, 268, 276, 284, 292]]),
])
def test_decoded_frames_are_the_computed_ones(index_videos, tmp_path, monkeypatch, fps, n, clips):
    """Frames actually decoded for 2 test clips of index-stamped videos at 25 and 30 fps."""
    csv = tmp_path / "test.csv"
    csv.write_text(f"{index_videos['fps%d' % fps]} 0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 2, 1
    got = []
    real = CT.make_views

    def spy(frames, rows, *a, **k):
        got.extend([[H.read_index(frames[r]) for r in clip] for clip in rows])
        return real(frames, rows, *a, **k)

    monkeypatch.setattr(CT, "make_views", spy)
    for backend in ("decord", "pyav"):
        cfg.DATA.DECODER = backend
        got.clear()
        item = build_dataset(cfg, "test")[0]
        assert item["ok"] and item["video"].shape == (2, 3, 8, 256, 256)
        assert got == clips


def test_train_clip_frames_at_25fps(index_videos, tmp_path, monkeypatch):
    """A training clip of the 25 fps video: start a in 0..196, frames a + floor(k * 20 / 3)."""
    csv = tmp_path / "train.csv"
    csv.write_text(f"{index_videos['fps25']} 0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    got = []
    real = DS.read_frames

    def spy(reader, indices, size=None):
        frames = real(reader, indices, None)  # full size, so that the drawn indices stay readable
        got.append([H.read_index(f) for f in frames])
        return frames

    monkeypatch.setattr(DS, "read_frames", spy)
    ds = build_dataset(cfg, "train")
    for e in range(3):
        ds.set_epoch(e)
        ds[0]
        a = int(np.random.default_rng([0, e, 0, 0, 0]).integers(0, 197))  # the dataset's first draw
        assert got[-1] == [a + s for s in (0, 6, 13, 20, 26, 33, 40, 46)]


def test_per_split_path_prefix(tmp_path):
    for split in ("train", "val"):
        (tmp_path / f"{split}.txt").write_text("abseiling/a.mp4 0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.DATA.TRAIN_FILE, cfg.DATA.VAL_FILE, cfg.DATA.TEST_FILE = "train.txt", "val.txt", "val.txt"
    cfg.DATA.PATH_PREFIX = "/k400/common"
    cfg.DATA.VAL_PATH_PREFIX = "/k400/videos_val"
    assert build_dataset(cfg, "train").records[0].path == "/k400/common/abseiling/a.mp4"
    assert build_dataset(cfg, "val").records[0].path == "/k400/videos_val/abseiling/a.mp4"
    assert build_dataset(cfg, "test").records[0].path == "/k400/common/abseiling/a.mp4"


def test_uint8_train_items_normalise_to_the_float_items(tiny_toy):
    """DATA.TRAIN_UINT8 (default): uint8 clips; normalize_views (the device side) gives the float32 items bit for bit."""
    over = {"DATA.MEAN": [0.43, 0.45, 0.47], "DATA.STD": [0.22, 0.225, 0.23], "DATA.REVERSE_PROB": 0.5}
    for k in (1, 2):
        small = build_dataset(toy_cfg(tiny_toy, **over, **{"DATA.NUM_SAMPLES": k}), "train")
        full = build_dataset(toy_cfg(tiny_toy, **over, **{"DATA.NUM_SAMPLES": k, "DATA.TRAIN_UINT8": False}), "train")
        for i in (0, 5, 11):
            a, b = small[i], full[i]
            assert a["video"].dtype == torch.uint8 and b["video"].dtype == torch.float32
            assert a["video"].shape == b["video"].shape == small.video_shape() and a["video"].is_contiguous()
            assert torch.equal(normalize_views(a["video"], over["DATA.MEAN"], over["DATA.STD"]), b["video"])
            assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))


def _spy_decoder(monkeypatch):
    """Count opens and reads of the dataset's decoder."""
    opens, reads = [], []
    real_open = DEC.open_video

    def spy_open(path, *a, **k):
        r = real_open(path, *a, **k)
        real_read = r.read
        opens.append(path)

        def spy_read(indices, **kw):
            reads.append(list(indices))
            return real_read(indices, **kw)
        r.read = spy_read
        return r

    _patch_open(monkeypatch, spy_open)
    return opens, reads


def test_num_samples_k_clips_from_one_decode(tiny_toy, monkeypatch):
    """DATA.NUM_SAMPLES 3: one open and one read; 3 clips with their own scale, crop and flip, each the
    resized crop of the decoded window that the documented draws give; labels mapped per clip."""
    from torchvision.transforms.v2 import functional as TF
    from gcvideo.data import decode_frames
    from gcvideo.data.sampling import train_clip_indices

    pairs = [[i, (i + 1) % 8] for i in range(8)]  # a flipped clip's label is the next class
    cfg = toy_cfg(tiny_toy, **{"DATA.NUM_SAMPLES": 3, "DATA.FLIP_LABEL_PAIRS": pairs, "DATA.TRAIN_UINT8": False,
                               "DATA.MEAN": [0, 0, 0], "DATA.STD": [1 / 255] * 3})
    ds = build_dataset(cfg, "train")
    opens, reads = _spy_decoder(monkeypatch)
    flips = 0
    for i in range(8):
        item = ds[i]
        assert len(opens) == len(reads) == i + 1  # one open, one decode per item, whatever K
        video = item["video"]
        assert video.shape == (3, 3, 4, 40, 40) and item["label"].shape == (3,)
        # the draws, replayed: clip start, then per clip scale, crop top, crop left (scaled frame), flip
        rng = np.random.default_rng([0, 0, i, 0, 0])
        frames = decode_frames(opens[-1], reads[-1])  # (4, 48, 48, 3): the toy videos are 48 x 48, 24 frames
        h, w = frames.shape[1:3]
        assert reads[-1] == train_clip_indices(24, 30, 4, 4, 30, np.random.default_rng([0, 0, i, 0, 0]))
        rng.integers(0, 24 - 16 + 1)  # the start
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
        boxes = []
        for k in range(3):
            s = int(rng.integers(48, 61))
            top, left = int(rng.integers(0, s - 40 + 1)), int(rng.integers(0, s - 40 + 1))  # square frames: s x s
            side = round(40 * 48 / s)
            t, lf = min(round(top * 48 / s), 48 - side), min(round(left * 48 / s), 48 - side)
            ref = TF.resized_crop(x, t, lf, side, side, [40, 40], antialias=True) if side != 40 else \
                x[..., t:t + 40, lf:lf + 40]
            flipped = rng.random() < 0.5
            ref = ref.flip(-1) if flipped else ref
            torch.testing.assert_close(video[k], ref.permute(1, 0, 2, 3).float(), rtol=0, atol=1e-3)
            assert int(item["label"][k]) == ((i % 8 + 1) % 8 if flipped else i % 8)
            boxes.append((s, top, left, bool(flipped)))
            flips += flipped
        assert len(set(boxes)) == 3  # three different augmentations
    assert 3 <= flips <= 21
    # the same item again: the same K clips (exact resume needs nothing but (seed, epoch, index))
    torch.testing.assert_close(ds[5]["video"], build_dataset(cfg, "train")[5]["video"], rtol=0, atol=0)


def test_pair_reversed_second_clip_is_the_first_reversed_in_time(tiny_toy):
    """DATA.PAIR_REVERSED with K = 4: clips 1 and 3 are clips 0 and 2 reversed in time, labels through
    REVERSE_LABEL_PAIRS; clips 0 and 2 are the two clips K = 2 draws without pairs (same draws, in order)."""
    from gcvideo.data.toy import FLIP_PAIRS, REVERSE_PAIRS

    over = {"DATA.FLIP_LABEL_PAIRS": FLIP_PAIRS, "DATA.REVERSE_PROB": 0.5, "DATA.REVERSE_LABEL_PAIRS": REVERSE_PAIRS}
    paired = build_dataset(toy_cfg(tiny_toy, **over, **{"DATA.NUM_SAMPLES": 4, "DATA.PAIR_REVERSED": True}), "train")
    plain = build_dataset(toy_cfg(tiny_toy, **over, **{"DATA.NUM_SAMPLES": 2}), "train")
    swap = {a: b for a, b in REVERSE_PAIRS}
    for i in range(8):
        p, q = paired[i], plain[i]
        v, lab = p["video"], p["label"].tolist()  # (4, 3, T, H, W)
        assert torch.equal(v[[0, 2]], q["video"]) and lab[0::2] == q["label"].tolist()
        for a in (0, 2):
            assert torch.equal(v[a + 1], v[a].flip(1))  # dim 1 of (3, T, H, W) is time
            assert not torch.equal(v[a + 1], v[a])
            assert lab[a + 1] == swap[lab[a]] != lab[a]


def test_pair_reversed_needs_an_even_number_of_clips(tiny_toy):
    with pytest.raises(ValueError, match="DATA.PAIR_REVERSED.*DATA.NUM_SAMPLES 3"):
        validate_cfg(toy_cfg(tiny_toy, **{"DATA.NUM_SAMPLES": 3, "DATA.PAIR_REVERSED": True}))
    with pytest.raises(ValueError, match="pair_reversed with num_samples = 1"):
        DS.VideoDataset(build_dataset(toy_cfg(tiny_toy), "train").records, transform=CT.TrainClips(pair_reversed=True))


def test_collate_train_puts_k_clips_in_the_batch(tiny_toy):
    ds = build_dataset(toy_cfg(tiny_toy, **{"DATA.NUM_SAMPLES": 2, "DATA.FLIP_LABEL_PAIRS": [[0, 3]]}), "train")
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=ds.collate)))
    items = [ds[i] for i in range(3)]
    assert batch["video"].shape == (6, 3, 4, 40, 40) and batch["video"].dtype == torch.uint8
    assert batch["label"].tolist() == [int(lab) for it in items for lab in it["label"]]
    for b, it in enumerate(items):
        assert torch.equal(batch["video"][2 * b:2 * b + 2], it["video"])
    assert batch["index"].tolist() == [0, 1, 2] and len(batch["skipped"]) == 3
    one = build_dataset(toy_cfg(tiny_toy), "train")  # K = 1: the default batch
    batch = next(iter(DataLoader(one, batch_size=3, collate_fn=one.collate)))
    assert batch["video"].shape == (3, 3, 4, 40, 40) and batch["label"].tolist() == [0, 1, 2]


def test_num_samples_training_resumes_bit_exact(tiny_toy, tmp_path):
    """K = 2, uint8 clips normalised in the loop: a run resumed from a mid-epoch checkpoint ends with the
    weights of the uninterrupted run."""
    import shutil
    from gcvideo.engine import train
    from gcvideo.utils.io import load_checkpoint_file

    def cfg_for(out):
        cfg = toy_cfg(tiny_toy, **{"DATA.NUM_SAMPLES": 2, "DATA.TRAIN_JITTER_SCALES": [32, 40],
                                   "DATA.TRAIN_CROP_SIZE": 32})
        opts = ["OUTPUT_DIR", str(out), "MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]",
                "TRAIN.BATCH_SIZE", "4", "TRAIN.CHANNELS_LAST", "False", "TRAIN.TEST_AT_END", "False",
                "TRAIN.EVAL_PERIOD", "0", "TRAIN.DETERMINISTIC", "True", "TRAIN.CHECKPOINT_ITERS", "2",
                "TRAIN.KEEP_LAST", "10", "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_EPOCHS", "1.0",
                "SOLVER.REFERENCE_BATCH_SIZE", "4", "DEVICE", "cpu", "MODEL.DROPOUT", "0.5"]
        cfg.merge_from_list(opts)
        return cfg

    torch.set_num_threads(1)
    a = tmp_path / "a"
    train(cfg_for(a))
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "config.yaml", b / "config.yaml")
    shutil.copy(a / "checkpoints" / "checkpoint_epoch0002_iter000002.pth", b / "checkpoints")
    train(cfg_for(b))
    assert not (b / "checkpoints" / "checkpoint_epoch0001.pth").exists()  # b started at epoch 2, iteration 2
    final_a = load_checkpoint_file(str(a / "checkpoints" / "checkpoint_epoch0002.pth"))
    final_b = load_checkpoint_file(str(b / "checkpoints" / "checkpoint_epoch0002.pth"))
    assert final_a["global_iter"] == final_b["global_iter"] == 8
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k


def test_persistent_workers_and_precise_bn_train_the_same_weights(tiny_toy, tmp_path):
    """2 persistent DataLoader workers (DATA.NUM_WORKERS 2), resumed from an uninterrupted in-process
    run's mid-epoch checkpoint, precise BN from the training loader after each epoch: the final
    weights and BN statistics of that run, bit for bit."""
    import shutil
    from gcvideo.engine import train
    from gcvideo.utils.io import load_checkpoint_file

    def cfg_for(out, workers):
        cfg = toy_cfg(tiny_toy, **{"DATA.TRAIN_JITTER_SCALES": [32, 40], "DATA.TRAIN_CROP_SIZE": 32,
                                   "DATA.REVERSE_PROB": 0.5})
        cfg.merge_from_list(["OUTPUT_DIR", str(out), "MODEL.WIDTH", "8", "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]",
                             "TRAIN.BATCH_SIZE", "4", "TRAIN.CHANNELS_LAST", "False", "TRAIN.TEST_AT_END", "False",
                             "TRAIN.EVAL_PERIOD", "1", "TRAIN.EVAL_VIEWS", "[1, 1]", "TRAIN.PRECISE_BN_BATCHES", "2",
                             "TRAIN.DETERMINISTIC", "True", "TRAIN.CHECKPOINT_ITERS", "2", "TRAIN.KEEP_LAST", "10",
                             "SOLVER.MAX_EPOCH", "3", "SOLVER.WARMUP_EPOCHS", "1.0", "SOLVER.REFERENCE_BATCH_SIZE", "4",
                             "DEVICE", "cpu", "MODEL.DROPOUT", "0.5", "DATA.NUM_WORKERS", str(workers),
                             "DATA.PREFETCH_FACTOR", "3",
                             "TRAIN.CPU_THREADS", "1"])  # the same thread count (float rounding) in both runs
        return cfg

    a = tmp_path / "a"
    train(cfg_for(a, 0))
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "config.yaml", b / "config.yaml")
    shutil.copy(a / "checkpoints" / "checkpoint_epoch0001_iter000002.pth", b / "checkpoints")
    train(cfg_for(b, 2))
    final_a = load_checkpoint_file(str(a / "checkpoints" / "checkpoint_epoch0003.pth"))
    final_b = load_checkpoint_file(str(b / "checkpoints" / "checkpoint_epoch0003.pth"))
    assert final_a["global_iter"] == final_b["global_iter"] == 12
    assert any("running_mean" in k for k in final_a["model"])
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k


def test_one_clip_is_decoded_at_its_jitter_scale(tiny_toy, monkeypatch):
    """K = 1 with a reader that scales in its colour conversion (read(indices, size=(h, w))): the
    scale is drawn before the read, the read asks for the scaled size, and the clip is the crop of
    what it returns at the drawn position (no second resize)."""
    real_open = DEC.open_video
    asked = []

    class ScalingReader:
        def __init__(self, r):
            self.r, self.num_frames, self.fps = r, r.num_frames, r.fps
            self.height, self.width = 48, 48  # the toy videos

        def read(self, indices, size=None):
            asked.append(size)
            frames = self.r.read(indices)
            if size is None:
                return frames
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)
            return torch.nn.functional.interpolate(x.float(), size=size).round().byte().permute(0, 2, 3, 1).numpy()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.r.close()

    _patch_open(monkeypatch, lambda path, *a, **k: ScalingReader(real_open(path, *a, **k)))
    ds = build_dataset(toy_cfg(tiny_toy, **{"DATA.RANDOM_FLIP": False, "DATA.TRAIN_UINT8": True}), "train")
    for i in (1, 6):
        item = ds[i]
        rng = np.random.default_rng([0, 0, i, 0, 0])
        rng.integers(0, 24 - 16 + 1)  # the start
        s = int(rng.integers(48, 61))
        assert asked[-1] == (s, s)  # square 48 x 48 frames scaled to short side s
        top, left = int(rng.integers(0, s - 40 + 1)), int(rng.integers(0, s - 40 + 1))
        with real_open(item["path"], "decord", 1) as r:
            idx = train_clip_indices(r.num_frames, r.fps, 4, 4, 30, np.random.default_rng([0, 0, i, 0, 0]))
            x = torch.from_numpy(r.read(idx)).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(x.float(), size=(s, s)).round().byte()[..., top:top + 40, left:left + 40]
        assert torch.equal(item["video"], ref.permute(1, 0, 2, 3))
