"""TEST.VIEW_PROTOCOL: the peers' test views, checked against the peers' own code.

* PySlowFast (not installable here): its functions are rewritten below from its source,
  facebookresearch/SlowFast@287ec0076846560f44a9327e931a5a2360240533 (slowfast/datasets/decoder.py
  ``get_start_end_idx`` / ``temporal_sampling`` / ``pyav_decode_stream`` / ``pyav_decode`` / ``decode``,
  slowfast/datasets/utils.py ``spatial_sampling``, slowfast/datasets/transform.py
  ``random_short_side_scale_jitter`` / ``uniform_crop``, test mode of slowfast/datasets/kinetics.py),
  with ints where its current ``decode`` passes lists, and run with PyAV on the files.
* pytorchvideo (installed): its own ``EncodedVideo`` (PyAV, audio decoded as its Kinetics dataset
  does), ``ConstantClipsPerVideoSampler(2.13, 10, 3)`` (pytorchvideo_trainer's Kinetics test
  config), ``uniform_temporal_subsample``, ``short_side_scale``, ``uniform_crop``.
* mmaction2 (not installed): ``SampleFrames(test_mode=True)``, ``Resize(scale=(-1, S))`` and
  ``ThreeCrop`` written from open-mmlab/mmaction2@4d6c93474730cad2f25e51109adcf96824efc7a3
  (mmaction/datasets/transforms/loading.py, processing.py; mmcv ``rescale_size``), frames from
  decord as its ``DecordInit``/``DecordDecode``.

Frame indices are checked on videos whose frame k shows k (so the index is read from what the
peer decoded) at 25, 30 and 29.97 fps, shorter than one clip and a stream-copy cut, and on the
real files by their timestamps; views pixel by pixel on the real files.
"""
import importlib
import math
import os
import random
import sys

import av
import numpy as np
import pytest
import torch

import data_helpers as H
import video_faults as VF
from gcvideo.data.annotations import VideoRecord
from gcvideo.data.clip_transforms import EvalViews
from gcvideo.data.dataset import VideoDataset
from gcvideo.data.decoder import open_video
from gcvideo.data.sampling import VIEW_PROTOCOLS, ClipSampling, protocol_clip_indices

T, R, F = 8, 8, 30
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
REAL = ["demo.mp4", "carphone_pristine.mp4", "part_0.mp4", "realshort.mp4"]


# ---- PySlowFast, rewritten from its source (see the module docstring) -----------------------------
def sf_get_start_end_idx(video_size, clip_size, clip_idx, num_clips):
    delta = max(video_size - clip_size, 0)
    start_idx = delta * clip_idx / num_clips
    return start_idx, start_idx + clip_size - 1


def sf_temporal_sampling(frames, start_idx, end_idx, num_samples):
    index = torch.linspace(start_idx, end_idx, num_samples)
    index = torch.clamp(index, 0, len(frames) - 1).long()
    return [frames[int(i)] for i in index]


def sf_pyav_decode_stream(container, start_pts, end_pts, stream):
    container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
    frames = {}
    for frame in container.decode(video=0):
        if frame.pts < start_pts:
            continue
        frames[frame.pts] = frame
        if frame.pts > end_pts:  # buffer_size 0: the first frame past the end is kept, then stop
            break
    return [frames[p] for p in sorted(frames)]


def sf_decode(path, sampling_rate, num_frames, clip_idx, num_clips, target_fps):
    """The frames (av.VideoFrame) of PySlowFast's test clip ``clip_idx``."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames_length, duration = stream.frames, stream.duration
        if duration is None:
            decode_all, start_pts, end_pts = True, 0, math.inf
        else:
            decode_all = False
            clip_size = np.maximum(1.0, np.ceil(sampling_rate * (num_frames - 1) / target_fps * fps))
            start_idx, end_idx = sf_get_start_end_idx(frames_length, clip_size, clip_idx, num_clips)
            timebase = duration / frames_length
            start_pts, end_pts = int(start_idx * timebase), int(end_idx * timebase)
        frames = sf_pyav_decode_stream(container, start_pts, end_pts, stream)
    clip_size = np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)
    start_idx, end_idx = sf_get_start_end_idx(len(frames), clip_size, clip_idx if decode_all else 0,
                                              num_clips if decode_all else 1)
    return sf_temporal_sampling(frames, start_idx, end_idx, num_frames)


def sf_short_side_scale(images, size):
    height, width = images.shape[2], images.shape[3]
    if (width <= height and width == size) or (height <= width and height == size):
        return images
    new_width, new_height = size, size
    if width < height:
        new_height = int(math.floor((float(height) / width) * size))
    else:
        new_width = int(math.floor((float(width) / height) * size))
    return torch.nn.functional.interpolate(images, size=(new_height, new_width), mode="bilinear",
                                           align_corners=False)


def sf_uniform_crop(images, size, spatial_idx):
    height, width = images.shape[2], images.shape[3]
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        y_offset = {0: 0, 1: y_offset, 2: height - size}[spatial_idx]
    else:
        x_offset = {0: 0, 1: x_offset, 2: width - size}[spatial_idx]
    return images[:, :, y_offset:y_offset + size, x_offset:x_offset + size]


def sf_view(frames, spatial_idx, scale, crop):
    """kinetics.py test mode: float, /255, tensor_normalize, T H W C -> C T H W, spatial_sampling."""
    x = torch.as_tensor(np.stack([f.to_rgb().to_ndarray() for f in frames])).float() / 255.0
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    x = x.permute(3, 0, 1, 2)
    return sf_uniform_crop(sf_short_side_scale(x, scale), crop, spatial_idx)


# ---- pytorchvideo, its own code ------------------------------------------------------------------
def ptv():
    """pytorchvideo's modules; its transforms import torchvision's old private module name."""
    sys.modules.setdefault("torchvision.transforms.functional_tensor",
                           importlib.import_module("torchvision.transforms._functional_tensor"))
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
    from pytorchvideo.data.encoded_video import EncodedVideo
    from pytorchvideo.transforms import functional as PF

    return ConstantClipsPerVideoSampler, EncodedVideo, PF


def ptv_clips(path, num_clips=10, crops=3):
    """[(aug_index, (C, T, H, W) float frames)] of pytorchvideo's test clips, in its order."""
    Sampler, EncodedVideo, PF = ptv()
    sampler = Sampler(clip_duration=2.13, clips_per_video=num_clips, augs_per_clip=crops)
    video = EncodedVideo.from_path(path, decode_audio=True, decoder="pyav")
    out = []
    try:
        for _ in range(num_clips * crops):
            info = sampler(0.0, video.duration, {})
            clip = video.get_clip(info.clip_start_sec, info.clip_end_sec)["video"]  # (C, t, H, W)
            out.append((info.aug_index, PF.uniform_temporal_subsample(clip, T)))  # (C, T, H, W)
    finally:
        video.close()
    return out


def ptv_scaled(frames, size):
    """Div255, Normalize (per channel, over (C, T, H, W)), ShortSideScale."""
    _, _, PF = ptv()
    x = frames / 255.0
    x = ((x.permute(1, 0, 2, 3) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)).permute(1, 0, 2, 3)
    return PF.short_side_scale(x, size)


def ptv_view(frames, aug_index, size):
    """The test transforms: ptv_scaled, then UniformCropVideo."""
    _, _, PF = ptv()
    return PF.uniform_crop(ptv_scaled(frames, size), size, aug_index)


# ---- mmaction2, written from its source ----------------------------------------------------------
def mm_frame_inds(total_frames, clip_len, frame_interval, num_clips):
    ori_clip_len = (clip_len - 1) * frame_interval + 1  # test_mode, no target_fps
    max_offset = max(total_frames - ori_clip_len, 0)
    if num_clips > 1:
        clip_offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
    else:
        clip_offsets = np.array([max_offset // 2])
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(frame_inds, total_frames).astype(np.int32)  # (num_clips, clip_len), 'loop'


def mm_resize_size(w, h, short):
    scale_factor = min(np.inf / max(h, w), short / min(h, w))  # mmcv.rescale_size, scale (inf, short)
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def mm_three_crop_offsets(img_h, img_w, crop):
    if crop == img_h:
        w_step = (img_w - crop) // 2
        return [(0, 0), (2 * w_step, 0), (w_step, 0)]  # (x, y): left, right, middle
    h_step = (img_h - crop) // 2
    return [(0, 0), (0, 2 * h_step), (0, h_step)]


# ---- the videos ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """name -> (path, shown index of frame 0): frame k shows k + that."""
    d = tmp_path_factory.mktemp("views")
    out = {
        "fps30": (H.write_index_video(str(d / "fps30.mp4"), 300, fps=30, gop=48), 0),
        "fps25": (H.write_index_video(str(d / "fps25.mp4"), 260, fps=25, gop=50), 0),
        "ntsc": (H.write_index_video(str(d / "ntsc.mp4"), 200, fps=30000 / 1001, gop=30), 0),
        "short": (H.write_index_video(str(d / "short.mp4"), 40, fps=30), 0),
        "portrait": (H.write_index_video(str(d / "portrait.mp4"), 90, fps=25, width=176, height=240), 0),
    }
    # Matroska stores no duration for the stream: PySlowFast and pytorchvideo decode all frames
    out["mkv"] = (H.write_index_video(str(d / "nodur.mkv"), 120, fps=25, container_format="matroska"), 0)
    src = H.write_index_video(str(d / "gop25.mp4"), 150, gop=25)
    out["cut"] = (VF.remux_cut(src, str(d / "cut.mp4"), 37), 37)
    return out


def shown(frame) -> int:
    return H.read_index(frame.to_rgb().to_ndarray() if isinstance(frame, av.VideoFrame) else frame)


def ours(protocol, path, num_clips=10):
    with open_video(path) as r:
        return protocol_clip_indices(protocol, r.stream_info(), r.num_frames, r.fps, T, R, F, num_clips)


def decode_order(path):
    """Timestamp -> frame index from a full decode (frames come out in timestamp order)."""
    with av.open(path) as c:
        return {f.pts: i for i, f in enumerate(c.decode(video=0))}


def views(path, protocol, num_clips=10, num_crops=3, size=256, eval_uint8=False):
    ds = VideoDataset([VideoRecord(path=path, label=-1, line=1)], sampling=ClipSampling(T, R, F),
                      transform=EvalViews(protocol, crop=size, num_clips=num_clips, num_crops=num_crops, mean=MEAN,
                                          std=STD, eval_uint8=eval_uint8))
    item = ds[0]
    assert item["ok"], item["error"]
    return item["video"]  # (V, 3, T, S, S)


# ---- PySlowFast ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fps30", "fps25", "ntsc", "short", "cut", "mkv"])
def test_pyslowfast_indices_on_stamped_videos(stamped, name):
    path, first = stamped[name]
    got = ours("pyslowfast", path)
    want = [[shown(f) - first for f in sf_decode(path, R, T, i, 10, F)] for i in range(10)]
    assert got == want
    assert got != ours("gcvideo", path) or name == "short"


@pytest.mark.parametrize("name", REAL)
def test_pyslowfast_indices_on_real_videos(files_dir, name):
    path = os.path.join(files_dir, name)
    order = decode_order(path)
    want = [[order[f.pts] for f in sf_decode(path, R, T, i, 10, F)] for i in range(10)]
    assert ours("pyslowfast", path) == want


@pytest.mark.parametrize("name,num_crops", [("demo.mp4", 3), ("carphone_pristine.mp4", 3), ("portrait", 3),
                                            ("carphone_pristine.mp4", 1)])
def test_pyslowfast_views_match_its_pipeline(files_dir, stamped, name, num_crops):
    path = stamped[name][0] if name in stamped else os.path.join(files_dir, name)
    got = views(path, "pyslowfast", num_clips=3, num_crops=num_crops, eval_uint8=True)  # float32 anyway
    assert got.dtype == torch.float32
    for i in range(3):
        frames = sf_decode(path, R, T, i, 3, F)
        for j, spatial_idx in enumerate([0, 1, 2] if num_crops == 3 else [1]):
            want = sf_view(frames, spatial_idx, 256, 256)
            torch.testing.assert_close(got[i * num_crops + j], want, rtol=0, atol=2e-5)


# ---- pytorchvideo --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fps30", "fps25", "ntsc", "short", "cut", "mkv"])
def test_pytorchvideo_indices_on_stamped_videos(stamped, name):
    path, first = stamped[name]
    clips = ptv_clips(path, crops=1)  # the clips' frames do not depend on the crops
    want = [[H.read_index(clips[i][1][:, t].permute(1, 2, 0).round().to(torch.uint8).numpy()) - first
             for t in range(T)] for i in range(10)]
    assert ours("pytorchvideo", path) == want


@pytest.mark.parametrize("name", ["demo.mp4", "carphone_pristine.mp4", "realshort.mp4", "portrait"])
def test_pytorchvideo_views_match_its_pipeline(files_dir, stamped, name):
    path = stamped[name][0] if name in stamped else os.path.join(files_dir, name)
    got = views(path, "pytorchvideo", num_clips=3)
    for v, (aug_index, frames) in enumerate(ptv_clips(path, num_clips=3)):
        assert aug_index == v % 3
        torch.testing.assert_close(got[v], ptv_view(frames, aug_index, 256), rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["demo.mp4", "portrait"])
def test_pytorchvideo_one_crop_is_torchvision_center_crop(files_dir, stamped, name):
    """One crop: pytorchvideo's evaluation transforms centre-crop with torchvision's CenterCrop."""
    from torchvision.transforms import CenterCrop

    path = stamped[name][0] if name in stamped else os.path.join(files_dir, name)
    got = views(path, "pytorchvideo", num_clips=2, num_crops=1, size=96)
    for v, (_, frames) in enumerate(ptv_clips(path, num_clips=2, crops=1)):
        torch.testing.assert_close(got[v], CenterCrop(96)(ptv_scaled(frames, 96)), rtol=0, atol=2e-5)


# ---- mmaction2 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fps30", "fps25", "ntsc", "short", "portrait", "mkv"])
def test_mmaction2_indices_on_stamped_videos(stamped, name):
    import decord

    path, first = stamped[name]
    vr = decord.VideoReader(path)
    inds = mm_frame_inds(len(vr), T, R, 10)
    shown_inds = [[H.read_index(f) - first for f in vr.get_batch(list(row)).asnumpy()] for row in inds]
    assert shown_inds == inds.tolist()  # DecordDecode's frame k is the file's frame k
    assert ours("mmaction2", path) == inds.tolist()


def test_mmaction2_on_a_stream_copy_cut_uses_the_decodable_frames(stamped):
    """decord counts the frames an edit list hides (and returns others out of order), so mmaction2's
    own indices on a cut are not the file's frames; gcvideo applies its formula to the 113 frames
    that play (documented in docs/data.md)."""
    import decord

    path, first = stamped["cut"]
    assert len(decord.VideoReader(path)) == 150 - 37 + 12  # the 12 hidden frames of the GOP counted
    with open_video(path) as r:
        assert r.num_frames == 113
    assert ours("mmaction2", path) == mm_frame_inds(113, T, R, 10).tolist()
    with open_video(path) as r:  # those frames are the ones that play: frame k shows 37 + k
        rows = mm_frame_inds(113, T, R, 10)
        assert [[shown(f) for f in r.read(list(row))] for row in rows] == (rows + first).tolist()


@pytest.mark.parametrize("name", ["demo.mp4", "carphone_pristine.mp4", "portrait"])
def test_mmaction2_views_match_its_pipeline(files_dir, stamped, name):
    import decord

    path = stamped[name][0] if name in stamped else os.path.join(files_dir, name)
    got = views(path, "mmaction2", num_clips=3, eval_uint8=True)  # uint8 views, normalised on the device
    assert got.dtype == torch.uint8
    vr = decord.VideoReader(path)
    inds = mm_frame_inds(len(vr), T, R, 3)
    for i, row in enumerate(inds):
        imgs = torch.from_numpy(vr.get_batch(list(row)).asnumpy()).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        h, w = imgs.shape[-2:]
        new_w, new_h = mm_resize_size(w, h, 256)
        # mmcv.imresize is OpenCV's bilinear (11-bit fixed point): torch's float bilinear is within one level
        imgs = torch.nn.functional.interpolate(imgs, size=(new_h, new_w), mode="bilinear", align_corners=False)
        for j, (x, y) in enumerate(mm_three_crop_offsets(new_h, new_w, 256)):
            want = imgs[..., y:y + 256, x:x + 256].permute(1, 0, 2, 3)  # (3, T, 256, 256)
            assert (got[i * 3 + j].float() - want).abs().max() <= 1.0


def test_mmaction2_one_crop_is_its_center_crop(stamped):
    """CenterCrop(S): left (w - S) // 2, top (h - S) // 2 (mmaction2 processing.py); 176x128 frames
    are resized to 96x70 for S = 70 (int(176 * 70 / 128 + 0.5) = int(96.75) = 96)."""
    import decord

    path = stamped["fps25"][0]
    got = views(path, "mmaction2", num_clips=2, num_crops=1, size=70, eval_uint8=True)  # (2, 3, T, 70, 70)
    vr = decord.VideoReader(path)
    assert mm_resize_size(176, 128, 70) == (96, 70)
    for i, row in enumerate(mm_frame_inds(len(vr), T, R, 2)):
        imgs = torch.from_numpy(vr.get_batch(list(row)).asnumpy()).permute(0, 3, 1, 2).float()
        imgs = torch.nn.functional.interpolate(imgs, size=(70, 96), mode="bilinear", align_corners=False)
        want = imgs[..., 0:70, 13:83].permute(1, 0, 2, 3)  # left (96 - 70) // 2 = 13
        assert (got[i].float() - want).abs().max() <= 1.0


def test_validation_views_follow_the_protocol(tmp_path, files_dir):
    """build_dataset's val split (TRAIN.EVAL_VIEWS clips x crops) takes the protocol's views too."""
    from gcvideo.config import get_cfg
    from gcvideo.data import build_dataset

    path = os.path.join(files_dir, "carphone_pristine.mp4")
    (tmp_path / "val.csv").write_text(f"{path} 0\n")
    cfg = get_cfg()
    cfg.merge_from_list(["DATA.PATH_TO_DATA_DIR", str(tmp_path), "TRAIN.EVAL_VIEWS", [2, 3], "MODEL.NUM_CLASSES", 1,
                         "DATA.EVAL_UINT8", False, "TEST.VIEW_PROTOCOL", "pyslowfast"])
    ds = build_dataset(cfg, "val")
    torch.testing.assert_close(ds[0]["video"], views(path, "pyslowfast", num_clips=2, num_crops=3))
    assert not torch.equal(ds[0]["video"], views(path, "gcvideo", num_clips=2, num_crops=3))


# ---- all protocols -------------------------------------------------------------------------------
def test_gcvideo_protocol_is_the_default_sampling(stamped):
    from gcvideo.data.sampling import view_clip_indices

    path = stamped["fps25"][0]
    with open_video(path) as r:
        assert ours("gcvideo", path) == view_clip_indices(r.num_frames, r.fps, T, R, F, 10)


def test_peer_protocols_differ_from_gcvideo_where_the_issue_says(stamped):
    """The reason for the option: on a 25 fps video each peer picks other frames than gcvideo."""
    path = stamped["fps25"][0]
    base = ours("gcvideo", path)
    for protocol in VIEW_PROTOCOLS[1:]:
        assert ours(protocol, path) != base, protocol


@pytest.mark.parametrize("protocol", ["pyslowfast", "pytorchvideo"])
def test_timestamp_protocols_fail_a_video_without_a_packet_index(files_dir, protocol):
    """PySlowFast and pytorchvideo select frames by timestamp; test.avi (packed B-frames) outputs
    frames out of timestamp order, so only decoding it would tell which frames they take: the video
    fails with the reason instead of being sampled some other way. Frame-count protocols decode it."""
    path = os.path.join(files_dir, "test.avi")
    with av.open(path) as c:  # the reason: output timestamps are not in order
        out = [f.pts for f in c.decode(video=0)][:8]
    assert out != sorted(out)
    ds = VideoDataset([VideoRecord(path=path, label=-1, line=1)],
                      transform=EvalViews(protocol, crop=64, num_clips=2, num_crops=1))
    item = ds[0]
    assert not item["ok"]
    assert item["error"].startswith(f"view_protocol: {protocol}: the frames' timestamps are not known")
    assert views(path, "mmaction2", num_clips=2, num_crops=1, size=64).shape == (2, 3, T, 64, 64)


def test_unknown_view_protocol_is_refused():
    with pytest.raises(ValueError, match="view_protocol = 'slowfast'"):
        VideoDataset([VideoRecord(path="x.mp4", label=-1, line=1)], transform=EvalViews("slowfast"))


def test_config_key_names_the_allowed_protocols():
    from gcvideo.config import ConfigError, load_cfg

    assert load_cfg(None, ["TEST.VIEW_PROTOCOL", "mmaction2"]).TEST.VIEW_PROTOCOL == "mmaction2"
    assert load_cfg(None, []).TEST.VIEW_PROTOCOL == "gcvideo"  # the default is unchanged
    with pytest.raises(ConfigError, match="TEST.VIEW_PROTOCOL = 'slowfast' is not allowed: expected one of "
                                          "'gcvideo', 'pyslowfast', 'pytorchvideo', 'mmaction2'"):
        load_cfg(None, ["TEST.VIEW_PROTOCOL", "slowfast"])
