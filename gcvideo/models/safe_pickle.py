"""A restricted, size-bounded unpickler for weights pickles (Caffe2 ``.pkl`` blob files).

:class:`RestrictedUnpickler` only builds numpy arrays, dtypes, numpy scalars and plain
containers: a pickle that names any other callable (``os.system``, ``builtins.eval``,
``copy_reg._reconstructor`` ...) is refused before anything runs. The callables it does allow
are bounded: together they may allocate at most ``max_bytes`` (by default
``2 * len(data) + 1 MiB``), so a tiny pickle calling ``bytearray(2e9)`` or rebuilding an array of
shape (10**9,) is refused before the memory is taken. Python-2 pickles are read with
``encoding="latin1"``.
"""
from __future__ import annotations

import codecs
import collections
import io
import math
import pickle
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _ma
    from numpy._core import numeric as _num
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _ma
    from numpy.core import numeric as _num

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_pickle_load", "default_allocation_limit"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted unpickler does not allow, or for more memory
    than its size justifies."""


def default_allocation_limit(data_size: int) -> int:
    """Bytes the callables of a ``data_size``-byte pickle may allocate: every array's bytes are in
    the pickle itself (``__setstate__`` copies them once), so twice the size plus 1 MiB of slack."""
    return 2 * int(data_size) + (1 << 20)


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


def _nbytes(shape, dtype: np.dtype) -> int:
    """Bytes of an array of ``shape`` (an int or a tuple of non-negative ints) and ``dtype``."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise UnsafePickleError(f"refusing array shape {shape!r}: expected non-negative integers")
    return math.prod(dims) * dtype.itemsize


class _SafeArray(np.ndarray):
    """The ndarray class a weights pickle gets: plain dtypes only, in construction and in
    ``__setstate__`` (where pickled arrays receive their dtype and bytes); turned back into
    plain ndarrays after loading. ``_charge`` (set per load) counts the bytes it allocates."""

    _charge: Optional[Callable[[int, str], None]] = None

    def __new__(cls, shape, dtype=float, buffer=None, offset=0, strides=None, order=None):
        if buffer is not None and not isinstance(buffer, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing an array over a {type(buffer).__name__} buffer")
        dtype = _plain_dtype(np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype)
        if buffer is None and cls._charge is not None:
            cls._charge(_nbytes(shape, dtype), f"numpy.ndarray({shape!r}, {dtype.str!r})")
        return super().__new__(cls, shape, dtype, buffer, offset, strides, order)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickleError("refusing an array state that is not (version, shape, dtype, fortran, data)")
        version, shape, dtype, fortran, data = state
        if isinstance(data, str):  # Python 2 pickles (Caffe2), read with encoding="latin1"
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing array data of type {type(data).__name__} (object arrays)")
        if type(self)._charge is not None:
            type(self)._charge(len(data), "an array's data")
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
    containers; any other global raises :class:`UnsafePickleError` naming it. The allowed
    callables may allocate at most ``max_bytes`` together (None: no bound)."""

    def __init__(self, file, *, encoding: str = "latin1", max_bytes: Optional[int] = None):
        super().__init__(file, encoding=encoding)
        self.max_bytes = max_bytes
        self.allocated = 0
        self._allowed = self._allowed_globals()

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` about to be allocated by ``what``; refuse past ``max_bytes``."""
        self.allocated += int(nbytes)
        if self.max_bytes is not None and self.allocated > self.max_bytes:
            raise UnsafePickleError(
                f"refusing {what}: it would allocate {int(nbytes):,} bytes, past the {self.max_bytes:,} bytes "
                "a weights pickle of this size may allocate (a memory bomb, not weights)")

    def _allowed_globals(self) -> Dict[Tuple[str, str], Any]:
        """(module, name) -> the object: the only callables a weights pickle may name."""
        charge = self.charge

        def reconstruct(cls, shape, dtype):  # ndarray.__reduce__: an empty array, filled by __setstate__
            if cls is not _SafeArray:
                raise UnsafePickleError(f"refusing to rebuild an array of class {cls!r}")
            dtype = _plain_dtype(dtype)
            charge(_nbytes(shape, dtype), f"numpy _reconstruct of shape {shape!r}")
            return _ma._reconstruct(_SafeArray, shape, dtype)

        def scalar(dtype, data=None):  # numpy scalars: raw bytes of one plain number
            dtype = _plain_dtype(dtype)
            if isinstance(data, str):  # Python 2 pickles, read with encoding="latin1"
                data = data.encode("latin1")
            if not isinstance(data, bytes) or len(data) != dtype.itemsize:
                raise UnsafePickleError(f"refusing a {dtype} scalar made of {type(data).__name__} data")
            return _ma.scalar(dtype, data)

        def frombuffer(buf, dtype, shape, order):  # protocol 5 arrays: a view of bytes in the pickle
            return np.asarray(_num._frombuffer(buf, _plain_dtype(dtype), shape, order))

        def encode(text, encoding="utf-8", errors="strict"):
            # Python 3 protocol <= 2 pickles bytes as _codecs.encode(text, "latin1"); other codecs
            # (hex, base64, ...) could grow data without bound through the memo
            if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
                raise UnsafePickleError(f"refusing _codecs.encode(<{type(text).__name__}>, {encoding!r}): only "
                                        "latin1 text is allowed")
            charge(len(text), "_codecs.encode")
            return codecs.encode(text, "latin1", errors)

        def new_bytearray(source=b"", *args):
            if isinstance(source, bool) or not isinstance(source, (int, bytes, bytearray, str)):
                raise UnsafePickleError(f"refusing bytearray({type(source).__name__})")
            if isinstance(source, int):
                if source < 0:
                    raise UnsafePickleError(f"refusing bytearray({source})")
                charge(source, f"bytearray({source})")
            else:
                charge(len(source), "bytearray")
            return bytearray(source, *args)

        def new_complex(real=0.0, imag=0.0):
            if not all(isinstance(v, (int, float)) for v in (real, imag)):
                raise UnsafePickleError("refusing complex() of non-numbers")
            return complex(real, imag)

        table = {
            ("numpy", "ndarray"): _SafeArray,
            ("numpy", "dtype"): _safe_dtype,
            ("_codecs", "encode"): encode,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(mod, "_reconstruct")] = reconstruct
            table[(mod, "scalar")] = scalar
        if hasattr(_num, "_frombuffer"):
            for mod in ("numpy.core.numeric", "numpy._core.numeric"):
                table[(mod, "_frombuffer")] = frombuffer
        for mod in ("builtins", "__builtin__"):
            for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", new_bytearray),
                              ("complex", new_complex)):
                table[(mod, name)] = obj
        return table

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: weights pickles may only contain numpy "
                "arrays, dtypes, scalars and plain containers")
        return obj

    def persistent_load(self, pid):  # torch-style persistent ids are not plain pickles
        raise UnsafePickleError(f"refusing persistent id {pid!r}: not a plain numpy pickle")

    def load(self):
        _SafeArray._charge = self.charge  # arrays made by numpy.ndarray(...) and __setstate__ count too
        try:
            return super().load()
        finally:
            _SafeArray._charge = None


def safe_pickle_load(data, encoding: str = "latin1", max_bytes: Optional[int] = None) -> Any:
    """Unpickle bytes (or a binary file object) with :class:`RestrictedUnpickler`; the allowed
    callables may allocate ``max_bytes`` (default :func:`default_allocation_limit` of the size)."""
    if not isinstance(data, (bytes, bytearray)):
        data = data.read()
    limit = default_allocation_limit(len(data)) if max_bytes is None else max_bytes
    return _plain_arrays(RestrictedUnpickler(io.BytesIO(data), encoding=encoding, max_bytes=limit).load())
