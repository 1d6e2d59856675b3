"""torchcodec's availability is a real load of its FFmpeg libraries, not the presence of the module:
where they are missing the decoder uses PyAV with the reason and the torchcodec tests skip. Runs on
machines with and without FFmpeg (the library is hidden by patching the loader)."""
import os
import subprocess
import sys

import pytest

import data_helpers as H
import video_faults as F
from gcvideo.data import decoder_torchcodec as dtc
from gcvideo.data.decoder import open_video

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# a pytest plugin (-p) that hides torchcodec's FFmpeg libraries before any test module is collected
HIDE_PLUGIN = '''
import gcvideo.data.decoder_torchcodec as dtc


def _no_ffmpeg():
    raise RuntimeError("Could not load libtorchcodec (hidden by the test)")


dtc._load_torchcodec = _no_ffmpeg
dtc.torchcodec_unavailable.cache_clear()
'''


@pytest.fixture
def hidden(monkeypatch):
    def no_ffmpeg():
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not installed")

    monkeypatch.setattr(dtc, "_load_torchcodec", no_ffmpeg)
    dtc.torchcodec_unavailable.cache_clear()
    yield
    dtc.torchcodec_unavailable.cache_clear()


def test_the_check_agrees_with_a_real_decode(files_dir):
    """On this machine, whatever it has: "" exactly when torchcodec decodes a frame."""
    pytest.importorskip("torchcodec")
    from torchcodec.decoders import VideoDecoder

    try:
        VideoDecoder(os.path.join(files_dir, "realshort.mp4"))[0]
        decodes = True
    except Exception:
        decodes = False
    dtc.torchcodec_unavailable.cache_clear()
    assert (dtc.torchcodec_unavailable() == "") == decodes, dtc.torchcodec_unavailable()
    assert F.torchcodec_missing() == dtc.torchcodec_unavailable()  # the tests skip on the same check


def test_hidden_library_is_reported_in_one_line_and_pyav_decodes(hidden, tmp_path, caplog):
    why = dtc.torchcodec_unavailable()
    assert why == "torchcodec unavailable: RuntimeError: Could not load libtorchcodec. Likely causes:"
    path = H.write_index_video(str(tmp_path / "v.mp4"), 12)
    with open_video(path, "torchcodec") as r:
        assert r.backend == "pyav" and r.num_frames == 12
        assert r.fallback.startswith("torchcodec: ") and why in r.fallback, r.fallback
        assert r.read([3]).shape[0] == 1
    assert F.torchcodec_missing() == why


def test_torchcodec_tests_skip_when_the_library_cannot_load(tmp_path):
    """What `make test` does on a fresh machine without FFmpeg's libraries: skips, no failures."""
    (tmp_path / "hide_torchcodec.py").write_text(HIDE_PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                        "-p", "hide_torchcodec", "-rs", "tests/data/test_decoder_torchcodec.py"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert "skipped" in last and "passed" not in last and "failed" not in last, last
    assert "torchcodec unavailable: RuntimeError: Could not load libtorchcodec (hidden by the test)" in r.stdout
