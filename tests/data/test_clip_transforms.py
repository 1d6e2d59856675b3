"""The dataset's transform objects (gcvideo.data.clip_transforms) and the plain objects it decodes with
(ClipSampling, DecodeOptions), each against hand-computed crops, flips, offsets and indices."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gcvideo.data.clip_transforms import EvalViews, TrainClips
from gcvideo.layers import ContextSpec
from gcvideo.data.decoder import BACKENDS, DecodeOptions
from gcvideo.data.sampling import VIEW_PROTOCOLS, ClipSampling

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)  # (T, H, W, 3)


def _item(frames_thwc):
    return torch.from_numpy(np.ascontiguousarray(frames_thwc.transpose(3, 0, 1, 2)))  # (3, T, H, W)


def _normalised(x_uint8):
    m = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1, 1)
    s = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1, 1)
    return ((x_uint8.double() / 255.0 - m) / s).float()


# -- TrainClips -------------------------------------------------------------------------------------
def test_one_clip_is_the_hand_computed_crop_and_flip_at_the_drawn_scale():
    """K = 1: the scale is drawn when the decoder asks for the frame size (12 x 16 source -> s x round(16 s / 12)),
    then crop top, crop left, flip from the same stream; a flip maps the label through its pair."""
    tc = TrainClips(jitter_scales=(10, 14), crop=8, flip_pairs=[[1, 2]], uint8=True)
    flips = set()
    for seed in range(24):
        size = tc.frame_size(np.random.default_rng(seed))
        r = np.random.default_rng(seed)  # the draws, replayed
        s = int(r.integers(10, 15))
        sh, sw = s, int(round(16 * s / 12))
        assert size(12, 16) == (sh, sw)
        frames = _frames(3, sh, sw, seed)  # as the decoder returns them, at the scale
        video, label = tc(frames, 1, size.rng, np.random.default_rng(99), size)
        top, left = int(r.integers(0, sh - 8 + 1)), int(r.integers(0, sw - 8 + 1))
        flipped = bool(r.random() < 0.5)
        want = frames[:, top:top + 8, left:left + 8]
        want = want[:, :, ::-1] if flipped else want
        assert video.dtype == torch.uint8 and torch.equal(video, _item(want))  # (3, T, 8, 8)
        assert label == (2 if flipped else 1)
        flips.add(flipped)
    assert flips == {True, False}


def test_float_clips_are_normalised_with_the_mean_and_std():
    tc = TrainClips(jitter_scales=(8, 8), crop=8, random_flip=False, mean=MEAN, std=STD)
    frames = _frames(2, 8, 8)
    video, label = tc(frames, 0, np.random.default_rng(0), np.random.default_rng(1), tc.frame_size(None))
    assert video.dtype == torch.float32 and label == 0
    torch.testing.assert_close(video, _normalised(_item(frames)), rtol=1e-6, atol=1e-5)


def test_k_clips_of_full_size_frames_and_their_reversed_pairs():
    """K = 4, PAIR_REVERSED: clips 0 and 2 drawn (scale, top, left; no flip or reversal draws when off) from
    full-size frames (scale 12 = the short side: the box is cut, not resized); clips 1 and 3 are them
    reversed in time with the reversed label."""
    tc = TrainClips(jitter_scales=(12, 12), crop=8, random_flip=False, num_samples=4, pair_reversed=True,
                    reverse_pairs=[[3, 5]], uint8=True)
    frames = _frames(4, 12, 16, 7)
    size = tc.frame_size(np.random.default_rng(3))
    assert size(12, 16) is None  # K clips: full-size frames
    video, labels = tc(frames, 3, size.rng, np.random.default_rng(4), size)
    r = np.random.default_rng(3)
    for k in (0, 2):
        assert int(r.integers(12, 13)) == 12
        top, left = int(r.integers(0, 12 - 8 + 1)), int(r.integers(0, 16 - 8 + 1))
        clip = _item(frames[:, top:top + 8, left:left + 8])  # (3, T, 8, 8)
        assert torch.equal(video[k], clip) and torch.equal(video[k + 1], clip.flip(1))
    assert video.shape == tc.video_shape(4) == (4, 3, 4, 8, 8)
    assert labels.dtype == torch.int64 and labels.tolist() == [3, 5, 3, 5]


def test_the_augmentation_gets_the_clip_and_its_own_stream():
    seen = []

    def invert(clip, rng):  # uint8 (T, 3, C, C)
        seen.append(rng)
        return 255 - clip

    plain = TrainClips(jitter_scales=(10, 14), crop=8, uint8=True)
    aug = TrainClips(jitter_scales=(10, 14), crop=8, uint8=True, augment=invert)
    frames = _frames(3, 12, 16)
    aug_rng = np.random.default_rng(5)
    want, _ = plain(frames, 0, np.random.default_rng(2), np.random.default_rng(6), plain.frame_size(None))
    got, _ = aug(frames, 0, np.random.default_rng(2), aug_rng, aug.frame_size(None))
    assert seen == [aug_rng] and torch.equal(got, 255 - want)  # the same crop and flip: stream 0 untouched


@pytest.mark.parametrize("kwargs,match", [
    ({"num_samples": 0}, "num_samples = 0; expected a positive number"),
    ({"num_samples": 3, "pair_reversed": True}, "pair_reversed with num_samples = 3"),
    ({"flip_pairs": [[1, 2], [1, 3]]}, r"DATA.FLIP_LABEL_PAIRS: class 1 is mapped twice \(2 and 3\)"),
])
def test_train_clips_refuse_impossible_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainClips(**kwargs)


# -- EvalViews --------------------------------------------------------------------------------------
def test_unknown_protocol_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="view_protocol = 'slowfast'") as e:
        EvalViews("slowfast")
    assert all(repr(p) in str(e.value) for p in VIEW_PROTOCOLS)


def test_gcvideo_views_are_the_hand_computed_crops_clip_major():
    """Frames with short side = the crop (no resize): 3 crops of a landscape frame at left 0, (14 - 8) // 2 = 3
    and 14 - 8 = 6; views clip-major; uint8 as decoded, float32 normalised."""
    frames = _frames(4, 8, 14)  # rows 0..3 hold frames 10, 20, 30, 40
    flat, clips = [10, 20, 30, 40], [[10, 30], [20, 40]]
    views = EvalViews(crop=8, num_clips=2, num_crops=3, eval_uint8=True, mean=MEAN, std=STD)
    got = views(frames, flat, clips)
    assert got.dtype == torch.uint8 and got.shape == views.video_shape(2) == (6, 3, 2, 8, 8)
    for ci, rows in enumerate([[0, 2], [1, 3]]):
        for oi, left in enumerate([0, 3, 6]):
            assert torch.equal(got[3 * ci + oi], _item(frames[rows][:, :, left:left + 8]))
    floats = EvalViews(crop=8, num_clips=2, num_crops=3, mean=MEAN, std=STD)(frames, flat, clips)
    torch.testing.assert_close(floats, _normalised(got), rtol=1e-6, atol=1e-5)


def test_one_view_and_failed_videos():
    one = EvalViews(crop=8, num_clips=1, num_crops=1, eval_uint8=True, single_view_4d=True)
    frames = _frames(2, 8, 10)
    got = one(frames, [0, 1], [[0, 1]])
    assert got.shape == one.video_shape(2) == (3, 2, 8, 8) and torch.equal(got, _item(frames[:, :, 1:9]))
    failed = one.failed(2)
    assert failed.shape == (3, 2, 8, 8) and failed.dtype == torch.uint8 and not failed.any()
    # pyslowfast and pytorchvideo resize normalised frames: float32 views whatever eval_uint8
    peer = EvalViews("pyslowfast", crop=8, num_clips=1, num_crops=3, eval_uint8=True)
    assert not peer.eval_uint8 and peer.failed(2).dtype == torch.float32 and peer.failed(2).shape == (3, 3, 2, 8, 8)


def test_peer_views_take_the_spec_eval_views_builds():
    """``EvalViews.peer_spec``: PySlowFast's one-crop test resizes to one_crop_scale, every other peer
    view to the crop; mmaction2's uint8 crops of a 8 x 14 frame (no resize) at left 0, 2 * 3 = 6, 3
    (ThreeCrop: left, right, middle), clip-major; a spec of gcvideo's protocol or 2 crops is refused."""
    from gcvideo.data.transforms import PeerViewSpec, make_peer_views

    one = EvalViews("pyslowfast", crop=8, num_clips=1, num_crops=1, one_crop_scale=10, mean=MEAN, std=STD)
    assert one.peer_spec() == PeerViewSpec("pyslowfast", 10, 8, 1, MEAN, STD, False)
    assert EvalViews("pytorchvideo", crop=8, num_crops=1, one_crop_scale=10).peer_spec().scale == 8
    mm = EvalViews("mmaction2", crop=8, num_clips=2, num_crops=3, eval_uint8=True, mean=MEAN, std=STD)
    assert mm.peer_spec() == PeerViewSpec("mmaction2", 8, 8, 3, MEAN, STD, True)
    frames = _frames(4, 8, 14)
    got = make_peer_views(frames, [[0, 2], [1, 3]], mm.peer_spec())
    assert got.dtype == torch.uint8 and got.shape == (6, 3, 2, 8, 8)
    for ci, rows in enumerate([[0, 2], [1, 3]]):
        for oi, left in enumerate([0, 6, 3]):
            assert torch.equal(got[3 * ci + oi], _item(frames[rows][:, :, left:left + 8]))
    assert torch.equal(mm(frames, [10, 20, 30, 40], [[10, 30], [20, 40]]), got)
    with pytest.raises(ValueError, match=r"peer view protocol 'gcvideo'; expected one of \('pyslowfast', "
                                         r"'pytorchvideo', 'mmaction2'\)"):
        PeerViewSpec("gcvideo", 8, 8, 3, MEAN, STD)
    with pytest.raises(ValueError, match="num_crops = 2; expected 1 or 3"):
        PeerViewSpec("mmaction2", 8, 8, 2, MEAN, STD)


# -- ClipSampling, DecodeOptions ----------------------------------------------------------------------
@pytest.mark.parametrize("fps,step", [(30, 2), (15, 1)])
def test_clip_sampling_train_indices(fps, step):
    """T 4 frames at rate 2 (30 fps): step 2 * fps / 30 source frames, start uniform in 0..N - 4 step."""
    reader = SimpleNamespace(num_frames=100, fps=fps)
    sampling = ClipSampling(4, 2, 30)
    assert isinstance(sampling.target_fps, float)
    start = int(np.random.default_rng(5).integers(0, 100 - 4 * step + 1))
    assert sampling.train_indices(reader, np.random.default_rng(5)) == [start + k * step for k in range(4)]


def test_decode_options_refuse_an_unknown_decoder_naming_the_backends():
    with pytest.raises(ValueError, match="decoder = 'ffmpeg'") as e:
        DecodeOptions("ffmpeg")
    assert all(repr(b) in str(e.value) for b in BACKENDS)


def test_allowed_names_come_from_the_modules_that_own_them():
    """DATA.DECODER and DATA.CLIP_LAYOUT are checked against the decoder's and the annotations' own tuples."""
    from gcvideo import config
    from gcvideo.data import annotations

    assert config.DECODERS is BACKENDS and config.CLIP_LAYOUTS is annotations.CLIP_LAYOUTS
    for key, allowed in (("DATA.DECODER", BACKENDS), ("DATA.CLIP_LAYOUT", annotations.CLIP_LAYOUTS)):
        with pytest.raises(config.ConfigError, match=key) as e:
            config.load_cfg(None, [key, "nope"])
        assert all(repr(a) in str(e.value) for a in allowed)
    from gcvideo.layers import CONTEXT_POSITIONS
    from gcvideo.models.resnet import ContextPlacement

    assert config.CONTEXT_POSITIONS is CONTEXT_POSITIONS  # CONTEXT.POSITION and ContextPlacement: one tuple
    with pytest.raises(ValueError, match="post_relu"):
        ContextPlacement(ContextSpec("gc"), ((),), "middle")


@pytest.mark.parametrize("uint8", [True, False])
@pytest.mark.parametrize("num_samples", [1, 2])
def test_train_item_stays_on_the_frames_device(uint8, num_samples):
    """DATA.DECODE_DEVICE cuda: torchcodec's frames are on the GPU and the item must stay there (uint8
    or normalised). Meta tensors stand in for GPU frames on a machine without one: an item built on the
    CPU from them (the old uint8 buffer) cannot be filled."""
    tc = TrainClips(jitter_scales=(32, 40), crop=32, uint8=uint8, num_samples=num_samples)
    frames = torch.zeros((4, 36, 48, 3), dtype=torch.uint8, device="meta")  # (T, h, w, 3) as decoded
    rng = np.random.default_rng(0)
    video, _ = tc(frames, 3, rng, np.random.default_rng(1), tc.frame_size(rng))
    assert video.device.type == "meta" and video.dtype == (torch.uint8 if uint8 else torch.float32)
    assert video.shape == ((3, 4, 32, 32) if num_samples == 1 else (num_samples, 3, 4, 32, 32))
