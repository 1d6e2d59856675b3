"""Checkpoint interop: PySlowFast (.pyth) and Caffe2 (.pkl) weights into gcvideo models.

References: C. Feichtenhofer et al., PySlowFast (Slow-only R50 "8x8" and its non-local
variant); X. Wang et al., "Non-local Neural Networks" (CVPR 2018), whose Caffe2 code
released the ``.pkl`` blob files; Y. Cao et al., "Global Context Networks" (TPAMI 2020),
Sec. 5.3: context blocks are added to a trained baseline and fine-tuned
(``add_context_blocks``).

Three naming schemes map onto gcvideo's (= pytorchvideo's ``slow_r50``) names:

========================================  ==========================================================
PySlowFast ``model_state``                gcvideo
========================================  ==========================================================
``s1.pathway0_stem.conv|bn.*``            ``blocks.0.conv|norm.*``
``s{k}.pathway0_res{i}.branch1.*``        ``blocks.{k-1}.res_blocks.{i}.branch1_conv.*``
``s{k}.pathway0_res{i}.branch1_bn.*``     ``blocks.{k-1}.res_blocks.{i}.branch1_norm.*``
``s{k}.pathway0_res{i}.branch2.a|b|c.*``  ``blocks.{k-1}.res_blocks.{i}.branch2.conv_a|b|c.*``
``s{k}.pathway0_res{i}.branch2.a_bn.*``   ``blocks.{k-1}.res_blocks.{i}.branch2.norm_a.*`` (b, c alike)
``s{k}.pathway0_nonlocal{i}.X.*``         ``blocks.{k-1}.res_blocks.{i}.context.X.*`` (X = conv_theta,
                                          conv_phi, conv_g, conv_out, bn; PySlowFast runs the block
                                          after res block i: our ``post_relu`` position)
``head.projection.*``                     ``blocks.5.proj.*``
========================================  ==========================================================

Caffe2 blob names (``{"blobs": {name: ndarray}}``): ``conv1_w``, ``res_conv1_bn_{s,b,rm,riv}``,
``res{k}_{i}_branch2{a,b,c}_w``, ``res{k}_{i}_branch2{a,b,c}_bn_{s,b,rm,riv}``,
``res{k}_{i}_branch1_w`` / ``_bn_*``, ``nonlocal_conv{k}_{i}_{theta,phi,g,out}_{w,b}``,
``nonlocal_conv{k}_{i}_bn_*``, ``pred_w`` / ``pred_b``. BN suffixes: ``s`` scale -> weight,
``b`` -> bias, ``rm`` -> running_mean, ``riv`` -> running_var (Caffe2's SpatialBN stores the
running *variance* under this name, as PySlowFast's converter also assumes).
``*_momentum`` (SGD state) and entries that are not arrays are skipped.

Pickles are read by :class:`RestrictedUnpickler`, which only builds numpy arrays, dtypes,
numpy scalars and plain containers: a pickle that names any other callable (``os.system``,
``builtins.eval``, ``copy_reg._reconstructor`` ...) is refused before anything runs.
Python-2 pickles are read with ``encoding="latin1"``.
"""
from __future__ import annotations

import io
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from gcvideo.utils.io import CheckpointError, load_checkpoint_file, path_manager

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_pickle_load", "load_weights_file",
           "slowfast_to_gcvideo_key", "caffe2_to_gcvideo_key", "convert_state_dict",
           "caffe2_blobs_to_tensors", "add_context_blocks"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted unpickler does not allow."""


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    """(module, name) -> the object: the only callables a weights pickle may name."""
    try:  # numpy >= 2
        from numpy._core import multiarray as _ma
        from numpy._core import numeric as _num
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as _ma
        from numpy.core import numeric as _num
    import codecs
    import collections

    table = {
        ("numpy", "ndarray"): _SafeArray,
        ("numpy", "dtype"): _safe_dtype,
        # Python 3 protocol <= 2 pickles bytes as _codecs.encode(text, "latin1"): a pure function.
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    def reconstruct(cls, shape, dtype):  # ndarray.__reduce__: an empty array, filled by __setstate__
        if cls is not _SafeArray:
            raise UnsafePickleError(f"refusing to rebuild an array of class {cls!r}")
        return _ma._reconstruct(_SafeArray, shape, _plain_dtype(dtype))

    def scalar(dtype, data=None):  # numpy scalars: raw bytes of one plain number
        dtype = _plain_dtype(dtype)
        if isinstance(data, str):  # Python 2 pickles, read with encoding="latin1"
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise UnsafePickleError(f"refusing a {dtype} scalar made of {type(data).__name__} data")
        return _ma.scalar(dtype, data)

    def frombuffer(buf, dtype, shape, order):  # protocol 5 arrays
        return np.asarray(_num._frombuffer(buf, _plain_dtype(dtype), shape, order))

    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = reconstruct
        table[(mod, "scalar")] = scalar
    if hasattr(_num, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            table[(mod, "_frombuffer")] = frombuffer
    for mod in ("builtins", "__builtin__"):
        for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray),
                          ("complex", complex)):
            table[(mod, name)] = obj
    return table


_PLAIN_KINDS = "biufc"  # bool, int, uint, float, complex: what weights are made of


def _plain_dtype(dtype) -> np.dtype:
    """A fresh, canonical numeric dtype equal to ``dtype``; anything else is refused.

    Object, structured, sub-array, string and void dtypes are refused, and the dtype object the
    pickle built is never used itself: a pickle can rewrite a dtype's internal flags through
    ``dtype.__setstate__`` (e.g. make an object dtype look plain), so arrays and scalars are
    always made with ``np.dtype(dtype.str)`` rebuilt from the kind, byte order and size alone.
    """
    if isinstance(dtype, bytes):
        dtype = dtype.decode("latin1")
    if isinstance(dtype, str):
        dtype = np.dtype(dtype)
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"refusing dtype {dtype!r}: not a numpy dtype")
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"refusing dtype {dtype.str!r}: weights pickles may only hold plain "
                                "bool/int/float/complex arrays")
    fresh = np.dtype(dtype.str)
    if fresh.kind not in _PLAIN_KINDS or fresh.hasobject:
        raise UnsafePickleError(f"refusing dtype {dtype.str!r}")
    return fresh


def _safe_dtype(spec, align=False, copy=False):
    """``numpy.dtype`` for pickles: plain numeric type codes only. Always a private copy (the
    pickle then sets its byte order through ``__setstate__``); it is checked and rebuilt again
    wherever an array or scalar is made from it."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refusing dtype spec {spec!r}: expected a type code string like 'f4'")
    _plain_dtype(spec)
    return np.dtype(spec, bool(align), True)


class _SafeArray(np.ndarray):
    """The ndarray class a weights pickle gets: plain dtypes only, in construction and in
    ``__setstate__`` (where pickled arrays receive their dtype and bytes); turned back into
    plain ndarrays after loading."""

    def __new__(cls, shape, dtype=float, buffer=None, offset=0, strides=None, order=None):
        if buffer is not None and not isinstance(buffer, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing an array over a {type(buffer).__name__} buffer")
        return super().__new__(cls, shape, _plain_dtype(np.dtype(dtype) if not isinstance(dtype, np.dtype)
                                                        else dtype), buffer, offset, strides, order)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickleError("refusing an array state that is not (version, shape, dtype, fortran, data)")
        version, shape, dtype, fortran, data = state
        if isinstance(data, str):  # Python 2 pickles (Caffe2), read with encoding="latin1"
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing array data of type {type(data).__name__} (object arrays)")
        super().__setstate__((version, shape, _plain_dtype(dtype), fortran, data))


def _plain_arrays(obj):
    """Replace every _SafeArray in a loaded structure by a plain ndarray (the same memory)."""
    if isinstance(obj, _SafeArray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return type(obj)((k, _plain_arrays(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_plain_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain_arrays(v) for v in obj)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves numpy array/dtype/scalar constructors and plain
    containers; any other global raises :class:`UnsafePickleError` naming it."""

    _ALLOWED: Optional[Dict[Tuple[str, str], Any]] = None

    def find_class(self, module: str, name: str):
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        obj = RestrictedUnpickler._ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: weights pickles may only contain numpy "
                "arrays, dtypes, scalars and plain containers")
        return obj

    def persistent_load(self, pid):  # torch-style persistent ids are not plain pickles
        raise UnsafePickleError(f"refusing persistent id {pid!r}: not a plain numpy pickle")


def safe_pickle_load(data, encoding: str = "latin1") -> Any:
    """Unpickle bytes (or a binary file object) with :class:`RestrictedUnpickler`."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return _plain_arrays(RestrictedUnpickler(f, encoding=encoding).load())


_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy (< 1.6) format starts with its pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def load_weights_file(path: str) -> Any:
    """Read a checkpoint file safely: torch files with ``weights_only=True``, other pickles
    (Caffe2 ``.pkl``) with :class:`RestrictedUnpickler`. Errors name the file."""
    if not path_manager.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path_manager.open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    is_torch = head.startswith(_ZIP_MAGIC) or head.startswith(_TORCH_LEGACY_MAGIC)
    if is_torch or not head:
        return load_checkpoint_file(path)
    with path_manager.open(path, "rb") as f:
        data = f.read()
    try:
        return safe_pickle_load(data)
    except UnsafePickleError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from e
    except Exception as e:  # truncated / not a pickle
        raise CheckpointError(f"checkpoint {path} is neither a torch checkpoint nor a readable pickle "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


# ---------------------------------------------------------------------------
# Caffe2 blobs -> tensors
# ---------------------------------------------------------------------------
def caffe2_blobs_to_tensors(obj: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``{"blobs": {name: ndarray}}`` (or a flat name -> ndarray dict) -> (tensors, skipped names).

    ``*_momentum`` blobs and entries that are not numeric arrays are skipped.
    """
    blobs = obj["blobs"] if isinstance(obj.get("blobs"), Mapping) else obj
    out: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    for name, value in blobs.items():
        name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        if name.endswith("_momentum"):
            skipped.append(name)
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            skipped.append(name)
            continue
        out[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
    return out, skipped


def is_caffe2_blobs(obj: Any) -> bool:
    """A Caffe2 weights pickle: a dict with a ``blobs`` dict, or a dict of numpy arrays."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("blobs"), Mapping):
        return True
    return bool(obj) and any(isinstance(v, np.ndarray) for v in obj.values()) and not any(
        isinstance(v, torch.Tensor) for v in obj.values())


# ---------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------
_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_PARAM_SUFFIX = {"w": "weight", "b": "bias"}


def slowfast_to_gcvideo_key(key: str, head_index: int = 5) -> Optional[str]:
    """PySlowFast Slow-only key -> gcvideo key (None if it has no place in gcvideo)."""
    m = re.fullmatch(r"s1\.pathway0_stem\.(conv|bn)\.(\w+)", key)
    if m:
        return f"blocks.0.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(2)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_res(\d+)\.(branch1|branch1_bn)\.(\w+)", key)
    if m:
        part = "branch1_conv" if m.group(3) == "branch1" else "branch1_norm"
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.{part}.{m.group(4)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_res(\d+)\.branch2\.([abc])(_bn)?\.(\w+)", key)
    if m:
        part = ("norm_" if m.group(4) else "conv_") + m.group(3)
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.branch2.{part}.{m.group(5)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_nonlocal(\d+)\.(conv_theta|conv_phi|conv_g|conv_out|bn|norm)\.(\w+)", key)
    if m:  # the block's BN is "bn" in older PySlowFast releases, "norm" in newer ones
        part = "bn" if m.group(3) == "norm" else m.group(3)
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.{part}.{m.group(4)}"
    m = re.fullmatch(r"head\.projection\.(weight|bias)", key)
    if m:
        return f"blocks.{head_index}.proj.{m.group(1)}"
    return None


def caffe2_to_gcvideo_key(name: str, head_index: int = 5) -> Optional[str]:
    """Caffe2 blob name -> gcvideo key (None if it has no place in gcvideo)."""
    if name == "conv1_w":
        return "blocks.0.conv.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name)
    if m:
        return f"blocks.0.norm.{_BN_SUFFIX[m.group(1)]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch2([abc])_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if m:
        stage, block, x, suf = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4)
        if suf == "w":
            return f"blocks.{stage}.res_blocks.{block}.branch2.conv_{x}.weight"
        return f"blocks.{stage}.res_blocks.{block}.branch2.norm_{x}.{_BN_SUFFIX[suf[3:]]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch1_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if m:
        stage, block, suf = int(m.group(1)) - 1, m.group(2), m.group(3)
        if suf == "w":
            return f"blocks.{stage}.res_blocks.{block}.branch1_conv.weight"
        return f"blocks.{stage}.res_blocks.{block}.branch1_norm.{_BN_SUFFIX[suf[3:]]}"
    m = re.fullmatch(r"nonlocal_conv([2-5])_(\d+)_(theta|phi|g|out)_(w|b)", name)
    if m:
        return (f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.conv_{m.group(3)}."
                f"{_PARAM_SUFFIX[m.group(4)]}")
    m = re.fullmatch(r"nonlocal_conv([2-5])_(\d+)_bn_(s|b|rm|riv)", name)
    if m:
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.bn.{_BN_SUFFIX[m.group(3)]}"
    m = re.fullmatch(r"pred_(w|b)", name)
    if m:
        return f"blocks.{head_index}.proj.{_PARAM_SUFFIX[m.group(1)]}"
    return None


def convert_state_dict(sd: Mapping[str, torch.Tensor], fmt: str, head_index: int = 5,
                       target: Optional[Mapping[str, torch.Tensor]] = None
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """Rename a ``"pyslowfast"`` or ``"caffe2"`` state dict to gcvideo keys.

    Returns (converted dict, gcvideo key -> source key, source keys with no gcvideo name).
    With ``target`` (a model's state dict), a tensor whose shape differs from the target's
    but has the same number of elements (Caffe2 FC weights stored as 1x1x1 convs, ...) is
    reshaped to the target shape.
    """
    to_gc = {"pyslowfast": slowfast_to_gcvideo_key, "caffe2": caffe2_to_gcvideo_key}.get(fmt)
    if to_gc is None:
        raise ValueError(f"fmt={fmt!r}: expected 'pyslowfast' or 'caffe2'")
    out: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    untranslated: List[str] = []
    for k, v in sd.items():
        g = to_gc(k, head_index)
        if g is None:
            untranslated.append(k)
            continue
        if g in out:
            raise CheckpointError(f"{fmt} keys {source_of[g]} and {k} both map to {g}")
        if target is not None and g in target and v.shape != target[g].shape and \
                v.numel() == target[g].numel():
            v = v.reshape(target[g].shape)
        out[g] = v
        source_of[g] = k
    return out, source_of, untranslated


# ---------------------------------------------------------------------------
# The two-stage recipe: baseline -> + context blocks
# ---------------------------------------------------------------------------
def add_context_blocks(cfg, baseline: Any, verbose: bool = False):
    """Build the model of ``cfg`` (with context blocks) and load a trained baseline into it.

    The paper's recipe (TPAMI Sec. 5.3): train a baseline, insert blocks, fine-tune. Context
    blocks are not in the baseline checkpoint and keep their initialisation; with
    ``CONTEXT.ZERO_INIT`` (add fusion: last transform conv zero; non-local: BN scale zero)
    the new model computes exactly the baseline's function. ``baseline`` is any file or
    state dict :func:`gcvideo.models.load_pretrained` reads (gcvideo, pytorchvideo,
    PySlowFast, Caffe2). Returns (model, LoadReport).
    """
    from gcvideo.models.build import build_model
    from gcvideo.models.pretrained import load_pretrained

    model = build_model(cfg)
    report = load_pretrained(model, baseline, verbose=verbose)
    return model, report
