"""Videos made to break in known ways, for the decoder tests, and the sequential reference.

Every maker writes a small file at test time from an index-stamped video (data_helpers.
write_index_video: frame k shows k). ``sequential_by_pts`` is the reference a backend is
compared with: a plain single-threaded decode of every packet in file order (a packet the
decoder rejects is skipped, as the ffmpeg command line does), keyed by presentation timestamp, so that frame
index i is the frame with the i-th smallest packet timestamp.
"""
import struct
from fractions import Fraction

import av
import numpy as np

import data_helpers as H
from gcvideo.data.decoder_torchcodec import torchcodec_unavailable


def torchcodec_missing():
    """"" when torchcodec can decode here (its FFmpeg libraries load), else why not: the library's
    own check, which the decoder's backend choice uses too."""
    return torchcodec_unavailable()


# every decoder backend this machine can run (tests parametrised over backends use it)
BACKENDS = ["pyav", "decord"] + ([] if torchcodec_missing() else ["torchcodec"])


def packet_table(path):
    """[(pts, byte offset, size, keyframe)] of the first video stream, in file (decode) order;
    packets an edit list discards are left out."""
    with av.open(path) as c:
        return [(p.pts, p.pos, p.size, p.is_keyframe) for p in c.demux(video=0) if p.size > 0 and not p.is_discard]


def sequential_by_pts(path):
    """Reference decode: ({index: frame}, frame count of the packet index, packets rejected)."""
    pts_all = sorted(pts for pts, _, _, _ in packet_table(path))
    out, rejected = {}, 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type, s.codec_context.thread_count = "NONE", 1  # concealed errors depend on threading
        for p in c.demux(s):
            try:
                for f in s.decode(p):
                    if f.pts in pts_all:  # frames an edit list hides are not output anyway
                        out[pts_all.index(f.pts)] = f.to_ndarray(format="rgb24")
            except av.error.FFmpegError:
                rejected += 1
    return out, len(pts_all), rejected


def damage_slice(src, dst, frame, how):
    """Copy ``src`` to ``dst`` with the packet of (presentation) ``frame`` damaged.

    how = "idr": its NAL unit type set to 5 (FFmpeg: "A non-intra slice in an IDR NAL unit",
    "decode_slice_header error"; the packet is rejected); "header": four bytes of the slice
    header inverted (packet rejected); "payload": eight bytes in the middle of the slice data
    inverted (the frame decodes with concealed errors). Returns the NAL header byte it found
    (0x01: a non-reference frame, 0x41/0x21: a reference frame).
    """
    table = packet_table(src)
    pts_sorted = sorted(t[0] for t in table)
    _, pos, size, _ = next(t for t in table if t[0] == pts_sorted[frame])
    data = bytearray(open(src, "rb").read())
    nal = data[pos + 4]  # after the 4-byte NAL length of the packet's first (only) NAL unit
    if how == "idr":
        data[pos + 4] = (nal & 0xE0) | 5
    elif how == "header":
        for k in range(5, 9):
            data[pos + k] ^= 0xFF
    elif how == "payload":
        for k in range(size // 2, size // 2 + 8):
            data[pos + k] ^= 0xFF
    else:
        raise ValueError(how)
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return nal


def remux_cut(src, dst, start_frame):
    """Stream-copy cut of ``src`` from frame ``start_frame`` on (as ``ffmpeg -ss -c copy`` does):
    packets from the keyframe before it are copied, shifted so that ``start_frame`` is at time
    0; the muxer writes an edit list that hides the frames before it."""
    with av.open(src) as ic, av.open(dst, "w", format="mp4") as oc:
        ist = ic.streams.video[0]
        ost = oc.add_stream_from_template(ist)
        packets = [p for p in ic.demux(ist) if p.size > 0]
        pts_sorted = sorted(p.pts for p in packets)
        cut = pts_sorted[start_frame]
        key = max(i for i, p in enumerate(packets) if p.is_keyframe and p.pts <= cut)
        for p in packets[key:]:
            p.pts -= cut
            p.dts -= cut
            p.stream = ost
            oc.mux(p)
    return dst


def lying_header_avi(dst, num_frames=40, claims=100000):
    """An AVI (mpeg4) of ``num_frames`` frames whose main and stream headers claim ``claims``."""
    H.write_index_video(dst, num_frames, codec="mpeg4", container_format="avi")
    data = bytearray(open(dst, "rb").read())
    a = data.find(b"avih")
    data[a + 8 + 16:a + 8 + 20] = struct.pack("<I", claims)  # dwTotalFrames
    s = data.find(b"strh")
    data[s + 8 + 32:s + 8 + 36] = struct.pack("<I", claims)  # dwLength
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return dst


def solid_video(dst, width, height, num_frames=3, fps=30):
    """A tiny h264 (or for odd sizes, mpeg4 in MKV) video of extreme size; frame k is grey 40 + 20 k."""
    codec = "libx264" if width % 2 == 0 and height % 2 == 0 else "mpeg4"
    with av.open(dst, "w", format="mp4" if codec == "libx264" else "matroska") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.thread_count = 1
        for k in range(num_frames):
            img = np.full((height, width, 3), 40 + 20 * k, dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = k
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return dst


def frames_by_nal(path):
    """{frame index: NAL header byte of its packet} (0x01 non-reference, 0x21/0x41 reference, 0x65 IDR)."""
    table = packet_table(path)
    pts_sorted = sorted(t[0] for t in table)
    data = open(path, "rb").read()
    return {pts_sorted.index(pts): data[pos + 4] for pts, pos, _, _ in table}


def make_faults(folder):
    """name -> path of every fault file of the exactness tests (plus "nonref"/"ref": the damaged frames).

    base: 120 index-stamped frames, one GOP, B-frames; nonref_header: a non-reference frame's
    packet rejected; ref_idr: a reference frame's slice made a bad IDR NAL unit; ref_payload:
    bytes inverted inside a reference frame (decodes with concealed errors); cut: a stream-copy
    cut from frame 37 of a GOP-25 video (edit list hides 12 frames); lie_avi: 40 frames, AVI
    headers claim 100000; vfr: variable frame rate."""
    import os

    p = lambda name: os.path.join(folder, name)  # noqa: E731
    base = H.write_index_video(p("base.mp4"), 120, gop=250)
    nal = frames_by_nal(base)
    nonref = min(i for i in range(40, 80) if nal[i] & 0x60 == 0)
    ref = min(i for i in range(40, 80) if nal[i] & 0x60 and nal[i] & 0x1F == 1)
    out = {"base": base, "nonref": nonref, "ref": ref}
    for name, frame, how in (("nonref_header", nonref, "header"), ("ref_idr", ref, "idr"),
                             ("ref_payload", ref, "payload")):
        damage_slice(base, p(name + ".mp4"), frame, how)
        out[name] = p(name + ".mp4")
    out["cut"] = remux_cut(H.write_index_video(p("gop25.mp4"), 100, gop=25), p("cut.mp4"), 37)
    out["lie_avi"] = lying_header_avi(p("lie.avi"), 40, claims=100000)
    out["vfr"] = H.write_index_video(p("vfr.mp4"), 60, vfr=True)
    return out
