"""Shared helpers of the model tests: tiny configs, random weights, hand-written peer name tables.

The name tables below are written by hand from the PySlowFast and Caffe2 naming
conventions, independently of gcvideo.models.interop, so a mapping error there
shows up in the tests as a missing key or a different output.
"""
import io
import pickle
import struct

import torch

from gcvideo.config import get_cfg


def _tiny_cfg(kind="none", location=None, **ctx):
    cfg = get_cfg()
    cfg.MODEL.WIDTH = 8
    cfg.MODEL.STAGE_DEPTHS = [1, 2, 2, 1]
    cfg.MODEL.NUM_CLASSES = 5
    cfg.MODEL.DROPOUT = 0.0
    cfg.CONTEXT.TYPE = kind
    cfg.CONTEXT.LOCATION = location or [[], [], [], []]
    for k, v in ctx.items():
        cfg.CONTEXT[k] = v
    return cfg


def _randomise(model, seed=0):
    """Random weights everywhere (context blocks too) and random BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith("num_batches_tracked"):
                t.fill_(7)
    return model.eval()


def _clip(seed=1):
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---- hand-written name tables (gcvideo -> PySlowFast, gcvideo -> Caffe2) ----
_SF_STEM = {"conv": "s1.pathway0_stem.conv", "norm": "s1.pathway0_stem.bn"}
_SF_BLOCK = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn",
             "branch2.conv_a": "branch2.a", "branch2.norm_a": "branch2.a_bn",
             "branch2.conv_b": "branch2.b", "branch2.norm_b": "branch2.b_bn",
             "branch2.conv_c": "branch2.c", "branch2.norm_c": "branch2.c_bn"}
_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_C2_BLOCK = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn",
             "branch2.conv_a": "branch2a", "branch2.norm_a": "branch2a_bn",
             "branch2.conv_b": "branch2b", "branch2.norm_b": "branch2b_bn",
             "branch2.conv_c": "branch2c", "branch2.norm_c": "branch2c_bn"}


def _to_slowfast(key):
    parts = key.split(".")
    if parts[1] == "0":  # blocks.0.{conv,norm}.p
        return f"{_SF_STEM[parts[2]]}.{parts[3]}"
    if parts[1] == "5":  # blocks.5.proj.p
        return f"head.projection.{parts[3]}"
    stage, block = int(parts[1]) + 1, parts[3]
    rest = parts[4:]
    if rest[0] == "context":  # NL after res block `block`
        return f"s{stage}.pathway0_nonlocal{block}.{rest[1]}.{rest[2]}"
    mod = ".".join(rest[:-1])
    return f"s{stage}.pathway0_res{block}.{_SF_BLOCK[mod]}.{rest[-1]}"


def _to_caffe2(key):
    """None for keys Caffe2 files do not have (BN counters)."""
    parts = key.split(".")
    p = parts[-1]
    if p == "num_batches_tracked":
        return None
    if parts[1] == "0":
        return "conv1_w" if parts[2] == "conv" else f"res_conv1_bn_{_C2_BN[p]}"
    if parts[1] == "5":
        return "pred_w" if p == "weight" else "pred_b"
    stage, block = int(parts[1]) + 1, parts[3]
    rest = parts[4:]
    if rest[0] == "context":
        mod = rest[1]
        if mod == "bn":
            return f"nonlocal_conv{stage}_{block}_bn_{_C2_BN[p]}"
        return f"nonlocal_conv{stage}_{block}_{mod[len('conv_'):]}_{'w' if p == 'weight' else 'b'}"
    name = _C2_BLOCK[".".join(rest[:-1])]
    if name.endswith("_bn"):
        return f"res{stage}_{block}_{name}_{_C2_BN[p]}"
    return f"res{stage}_{block}_{name}_w"


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), as Caffe2's
    Python-2 pickles of numpy arrays have them; protocol 2."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()
