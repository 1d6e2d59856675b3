"""The torchcodec backend: exact indices, PyAV's pixels, trusted only where verified, PyAV where
not; NVDEC decoding on CUDA (``-m cuda``). Skipped where torchcodec or FFmpeg is missing."""
import os

import numpy as np
import pytest
import torch

import data_helpers as H
import video_faults as F
from gcvideo.data.decoder import VideoDecodeError, decode_frames, open_video

pytestmark = pytest.mark.skipif(bool(F.torchcodec_missing()), reason=F.torchcodec_missing() or "ok")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return F.make_faults(str(tmp_path_factory.mktemp("faults_tc")))


def test_exact_indices_order_and_duplicates(index_videos):
    idx = [5, 299, 0, 5, 150, 149, 251, 250, 249, 5]
    with open_video(index_videos["fps30"], "torchcodec") as r:
        assert r.backend == "torchcodec" and r.fallback == "" and r.num_frames == 300
        frames = r.read(idx)
    assert isinstance(frames, np.ndarray) and frames.shape == (len(idx), 128, 176, 3) and frames.dtype == np.uint8
    assert [H.read_index(f) for f in frames] == idx


@pytest.mark.parametrize("name", ["demo.mp4", "part_0.mp4", "realshort.mp4"])
def test_same_pixels_as_pyav_on_real_h264(files_dir, name):
    path = os.path.join(files_dir, name)
    ref, n, _ = F.sequential_by_pts(path)
    idx = list(np.random.default_rng(0).integers(0, n, 16)) + [n - 1, 0]
    with open_video(path, "torchcodec") as r:
        assert r.backend == "torchcodec" and r.num_frames == n
        got = r.read(idx)
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))


@pytest.mark.parametrize("name", ["test.avi", "cricket_trim.gif"])
def test_containers_without_timestamps_use_pyav(files_dir, name):
    path = os.path.join(files_dir, name)
    with open_video(path, "torchcodec") as r:
        assert r.backend == "pyav" and r.fallback.startswith("torchcodec: ")


def test_cut_and_vfr_trusted_and_exact(faults):
    for kind, count, first in (("cut", 63, 37), ("vfr", 60, 0)):
        ref, _, _ = F.sequential_by_pts(faults[kind])
        idx = [0, 1, count // 2, count - 1, 3]
        with open_video(faults[kind], "torchcodec") as r:
            assert r.backend == "torchcodec" and r.num_frames == count
            got = r.read(idx)
        np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))
        assert [H.read_index(f) for f in got] == [first + i for i in idx]


def test_damaged_slice_pyav_takes_over_never_shifts(faults):
    path, bad = faults["nonref_header"], faults["nonref"]
    ref, _, _ = F.sequential_by_pts(path)
    with open_video(path, "torchcodec") as r:
        with pytest.raises(VideoDecodeError, match="damaged"):
            r.read([bad - 1, bad, bad + 1])
        assert r.backend == "pyav" and "get_frames_at failed" in r.fallback
        idx = [bad + 1, bad + 7, 0]
        np.testing.assert_array_equal(r.read(idx), np.stack([ref[i] for i in idx]))


def test_every_returned_frame_has_the_asked_timestamp(faults, monkeypatch):
    """A torchcodec that returned the next frame (shifted timestamps) is caught on the read."""
    from torchcodec.decoders import VideoDecoder

    real = VideoDecoder.get_frames_at

    def next_frame(self, indices):
        return real(self, [min(i + 1, 119) for i in indices])

    monkeypatch.setattr(VideoDecoder, "get_frames_at", next_frame)
    with open_video(faults["base"], "torchcodec") as r:
        got = r.read([10, 11])
        assert r.backend == "pyav" and "returned the frame at" in r.fallback
    assert [H.read_index(f) for f in got] == [10, 11]


def test_size(files_dir):
    path = os.path.join(files_dir, "demo.mp4")
    full = decode_frames(path, [0, 100], backend="pyav")
    got = decode_frames(path, [0, 100], backend="torchcodec", size=(128, 170))
    from gcvideo.data.decoder import resize_frames

    np.testing.assert_array_equal(got, resize_frames(full, (128, 170)))


# -- NVDEC (run with -m cuda on a GPU machine) --------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decoding_exact_indices_on_the_gpu(index_videos, files_dir):
    idx = [5, 299, 0, 5, 150, 251, 249]
    with open_video(index_videos["fps30"], "torchcodec", device="cuda") as r:
        assert r.backend == "torchcodec", r.fallback
        got = r.read(idx)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.uint8
    assert got.shape == (len(idx), 128, 176, 3)
    assert [H.read_index(f) for f in got.cpu().numpy()] == idx
    # NVDEC's colour conversion is not swscale's: close to PyAV's pixels, not equal
    path = os.path.join(files_dir, "demo.mp4")
    ref = decode_frames(path, [0, 140, 279], backend="pyav")
    gpu = decode_frames(path, [0, 140, 279], backend="torchcodec", device="cuda")
    assert gpu.is_cuda and np.abs(gpu.cpu().numpy().astype(int) - ref.astype(int)).mean() < 3.0
    small = decode_frames(path, [0, 140], backend="torchcodec", device="cuda", size=(128, 170))
    assert small.is_cuda and small.shape == (2, 128, 170, 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fallback_still_returns_gpu_tensors(files_dir, faults):
    with open_video(os.path.join(files_dir, "test.avi"), "torchcodec", device="cuda") as r:
        assert r.backend == "pyav"
        got = r.read([0, 3])
    assert got.is_cuda and got.shape == (2, 240, 320, 3)
    with pytest.raises(VideoDecodeError, match="damaged"):
        decode_frames(faults["nonref_header"], [faults["nonref"]], backend="torchcodec", device="cuda")


def test_tensor_frames_give_the_same_items(index_videos):
    """The GPU path's transforms take the decoder's tensors: on CPU tensors they give exactly the
    items of numpy frames (the same code runs on CUDA tensors with DATA.DECODE_DEVICE cuda)."""
    from gcvideo.data.transforms import make_views, train_transform

    frames = decode_frames(index_videos["fps30"], list(range(0, 64, 8)), backend="pyav")
    for as_tensor in (False, True):
        x = torch.from_numpy(frames.copy()) if as_tensor else frames
        v, f = train_transform(x, np.random.default_rng(3), (64, 80), 64, True, (0.45,) * 3, (0.225,) * 3)
        views = make_views(x, [[0, 1, 2, 3], [4, 5, 6, 7]], 64, 3, (0.45,) * 3, (0.225,) * 3, as_uint8=True)
        if as_tensor:
            assert torch.equal(v, v0) and f == f0 and torch.equal(views, views0)
        v0, f0, views0 = v, f, views


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_dataset_items_on_the_gpu(index_videos, tmp_path):
    from gcvideo.config import get_cfg
    from gcvideo.data import build_dataset

    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text(f"{index_videos['fps30']} 0\n{tmp_path / 'missing.mp4'} 0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.DATA.DECODER, cfg.DATA.DECODE_DEVICE, cfg.DATA.NUM_WORKERS, cfg.DATA.PIN_MEMORY = "torchcodec", "cuda", 0, False
    cfg.DATA.TRAIN_JITTER_SCALES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = [64, 80], 64, 64
    item = build_dataset(cfg, "train")[0]  # DATA.TRAIN_UINT8 (the default): uint8, normalised by DevicePrep
    assert item["video"].is_cuda and item["video"].shape == (3, 8, 64, 64) and item["video"].dtype == torch.uint8
    cfg.DATA.TRAIN_UINT8 = False  # normalised in the dataset: float32, on the GPU all the same
    item = build_dataset(cfg, "train")[0]
    assert item["video"].is_cuda and item["video"].shape == (3, 8, 64, 64) and item["video"].dtype == torch.float32
    test = build_dataset(cfg, "test")
    good, bad = test[0], test[1]
    assert good["ok"] and good["video"].is_cuda and good["video"].shape == (30, 3, 8, 64, 64)
    assert not bad["ok"] and bad["video"].is_cuda and bad["error"].startswith("missing:")
