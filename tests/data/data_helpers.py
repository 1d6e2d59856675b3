"""Helpers of the data tests: videos whose frames carry their own index, and broken files."""
import os
from fractions import Fraction

import av
import numpy as np

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
BITS = 10  # frame index bits drawn per frame
BLOCK = 16  # pixels per bit block


def index_frame(i: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 frame showing ``i`` as BITS black/white blocks along the top."""
    img = np.full((height, width, 3), 128, dtype=np.uint8)
    for b in range(BITS):
        img[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if (i >> b) & 1 else 0
    img[BLOCK:, :, 0] = (i * 7) % 256  # some content that changes
    return img


def read_index(frame: np.ndarray) -> int:
    """The index drawn by ``index_frame`` (frame: (H, W, 3) uint8)."""
    return sum(1 << b for b in range(BITS)
               if frame[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() > 128)


def write_index_video(path: str, num_frames: int, fps=30, width: int = 176, height: int = 128, gop: int = 250,
                      start: int = 0, faststart: bool = False, bframes: int = 3, codec: str = "libx264",
                      container_format=None, vfr: bool = False) -> str:
    """An h264 video whose frame k shows ``k`` (see index_frame); ``start`` < 0 makes an edit list
    that hides the first -start frames (frame k then shows k - start); ``vfr``: variable frame
    rate (frame durations alternate 1, 2 and 3 ticks of 1/(2 fps) s: on average ``fps``)."""
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", format=container_format, options=opts) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if vfr:
            s.codec_context.time_base = Fraction(1, 2 * fps)
        s.codec_context.thread_count = 1
        if codec == "libx264":
            s.options = {"g": str(gop), "crf": "12", "preset": "veryfast", "bf": str(bframes), "threads": "1",
                         "sc_threshold": "0"}
        for k in range(num_frames):
            f = av.VideoFrame.from_ndarray(index_frame(k, width, height), format="rgb24")
            f.pts = (k // 3) * 6 + (0, 1, 3)[k % 3] if vfr else k + start
            if vfr:
                f.time_base = Fraction(1, 2 * fps)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_audio_only(path: str) -> str:
    with av.open(path, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = k * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_no_packets(path: str) -> str:
    """An mp4 with a video stream but not a single frame."""
    with av.open(path, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    return path


def make_broken(folder: str) -> dict:
    """kind -> path of every broken-video kind the dataset must survive."""
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    out = {"missing": p("missing.mp4")}
    open(p("empty.mp4"), "wb").close()
    out["empty"] = p("empty.mp4")
    with open(p("text.mp4"), "w") as f:
        f.write("this is not a video, just text named .mp4\n" * 20)
    out["text"] = p("text.mp4")
    good = write_index_video(p("good_tmp.mp4"), 90)
    data = open(good, "rb").read()
    with open(p("truncated.mp4"), "wb") as f:  # index (moov) at the end is cut off
        f.write(data[:len(data) // 2])
    out["truncated"] = p("truncated.mp4")
    out["audio_only"] = write_audio_only(p("audio_only.mp4"))
    out["no_packets"] = write_no_packets(p("no_packets.mp4"))
    # every packet garbage: the container is fine, nothing decodes
    fs = open(write_index_video(p("fs_tmp.mp4"), 30, faststart=True), "rb").read()
    mdat = fs.find(b"mdat")
    garbage = bytearray(fs)
    rng = np.random.default_rng(0)
    garbage[mdat + 4:] = rng.integers(0, 256, len(fs) - mdat - 4, dtype=np.uint8).tobytes()
    with open(p("undecodable.mp4"), "wb") as f:
        f.write(bytes(garbage))
    out["undecodable"] = p("undecodable.mp4")
    os.remove(good)
    os.remove(p("fs_tmp.mp4"))
    return out
