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


def write_large_video(path: str, num_bytes: int, width: int = 320, height: int = 240, gop: int = 30) -> str:
    """An h264 mp4 of about ``num_bytes`` made cheaply: one lossless GOP of noise frames (an IDR
    frame, then P-frames; ~200 kB a frame at 320x240) encoded once, then muxed again and again
    with shifted timestamps. Frame k of GOP g is noise frame k: a valid stream that decodes
    to the same ``gop`` frames over and over."""
    import io

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv444p"
        s.options = {"g": str(gop), "bf": "0", "qp": "0", "preset": "ultrafast", "threads": "1"}
        for k in range(gop):
            img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    buf.seek(0)
    with av.open(buf) as src, av.open(path, "w", format="mp4") as dst:
        s_in = src.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in src.demux(s_in) if p.size > 0]
        s_out = dst.add_stream_from_template(s_in)
        gop_bytes, span = sum(len(b) for b, _, _, _ in packets), max(t for _, t, _, _ in packets) + 1
        for g in range(max(1, round(num_bytes / gop_bytes))):
            for data, pts, dts, key in packets:
                p = av.Packet(data)
                p.stream, p.time_base = s_out, s_in.time_base
                p.pts, p.dts, p.is_keyframe = pts + g * span, dts + g * span, key
                dst.mux(p)
    return path


PEAK_RSS_SCRIPT = """
import resource, sys, time
from gcvideo.data.decoder import open_video
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with open_video(sys.argv[1]) as r:
    frames = r.read([r.num_frames // 2 + 2 * i for i in range(8) if r.num_frames // 2 + 2 * i < r.num_frames])
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.num_frames, frames.shape[0], time.perf_counter() - t)
"""


def peak_rss_of_read(path: str) -> dict:
    """Open ``path`` and read an 8-frame clip (stride 2) from its middle with the PyAV reader in a
    fresh Python process: its peak RSS in bytes before opening and after the read (getrusage
    ru_maxrss), the frame count, the frames read and the seconds open + read took."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, path], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    before, after, num_frames, read = (int(v) for v in out[:4])
    return {"before": before * 1024, "peak": after * 1024, "num_frames": num_frames, "read": read,
            "seconds": float(out[4])}
