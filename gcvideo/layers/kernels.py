"""Fused CPU kernels for the GC block (``_gc_kernels.c``): attention pooling, its fusion and the
transform at small batch; built on first use.

The C source is compiled once per machine with the system C compiler (``$CC`` or ``gcc``,
``-O3 -march=native -fopenmp``; about a second) into a cache folder, and loaded with ctypes.
The library links the OpenMP runtime PyTorch has already loaded (``libgomp.so.1``), so it uses
the same threads. Where no compiler is found, or the build fails, or ``GCVIDEO_CPU_KERNELS=0``,
the blocks use their torch-op path (same math; ``gcvideo/layers/context.py``) after one warning.

Cache folder: ``$GCVIDEO_KERNEL_DIR``, else ``$XDG_CACHE_HOME/gcvideo`` (``~/.cache/gcvideo``), else
``$TMPDIR/gcvideo-<uid>``; only a folder owned by this user and writable by nobody else is used.
The file name holds a hash of the source, the flags and this CPU's model and feature flags, so
machines with different CPUs that share a home folder build their own copy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Optional

import torch

__all__ = ["cpu_kernels", "usable", "linear", "linear_backward"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_gc_kernels.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_lib = None
_tried = False

_I64, _F, _P, _INT = ctypes.c_longlong, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    # x, w, bias, N, C, L, cl, nt, ctx, p
    "gc_pool_forward": [_P, _P, _F, _I64, _I64, _I64, _INT, _INT, _P, _P],
    # gout, out, g, gsum, N, C, L, cl, nt
    "gc_relu_grad_sum": [_P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT],
    # y, s, t, out, N, C, L, cl, nt
    "gc_add_relu": [_P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT],
    # y, g, p, gctx, cg, w, N, C, L, cl, nt, grad_y, gw, gb, sp
    "gc_pool_backward": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT, _P, _P, _P, _P],
    # W, x, b, N, R, K, nt, y
    "gc_linear_forward": [_P, _P, _P, _I64, _I64, _I64, _INT, _P],
    # W, x, g, N, R, K, nt, gW, dx
    "gc_linear_backward": [_P, _P, _P, _I64, _I64, _I64, _INT, _P, _P],
}


def _cache_dir() -> str:
    d = os.environ.get("GCVIDEO_KERNEL_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "gcvideo")
    return d


def _cpu_id() -> str:
    """Model name and feature flags of this CPU (what -march=native compiles for)."""
    keep = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    keep.append(line.strip())
                if len(keep) >= 2:
                    break
    except OSError:
        pass
    return "\n".join(keep)


def _private(folder: str) -> bool:
    """Create ``folder`` (mode 700) if needed; True if it is ours and nobody else can write to it
    (a library is loaded from there: a shared temporary folder must not let others plant one)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _build(cc: str) -> str:
    with open(_SRC, "rb") as f:
        src = f.read()
    key = hashlib.sha256(src + " ".join([cc] + _FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    for folder in (_cache_dir(), os.path.join(tempfile.gettempdir(), f"gcvideo-{os.getuid()}")):
        path = os.path.join(folder, f"gc_kernels_{key}.so")
        try:
            if not _private(folder):
                continue
            if os.path.exists(path):
                if os.stat(path).st_uid == os.getuid():
                    return path
                continue
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                proc = subprocess.run([cc, *_FLAGS, "-o", tmp, _SRC], capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"{cc} failed:\n{proc.stderr[-2000:]}")
                os.replace(tmp, path)  # atomic: concurrent builds (test workers) both end with a whole file
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return path
        except PermissionError:
            continue  # read-only cache folder: try the temporary folder
    raise RuntimeError(f"no private writable folder for the kernels ({_cache_dir()!r} or the temporary folder; "
                       "set GCVIDEO_KERNEL_DIR)")


def cpu_kernels() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, building it on first use; None where it cannot be had."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("GCVIDEO_CPU_KERNELS", "1") == "0":
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        torch.get_num_threads()  # PyTorch's OpenMP runtime is loaded before the library links to it
        lib = ctypes.CDLL(_build(os.environ.get("CC", "gcc")))
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
        _lib = lib
    except Exception as e:  # no compiler, a failed build, a library that does not load
        warnings.warn(f"gcvideo: the fused CPU kernels of the GC block are not available ({e}); "
                      "using the torch-op path (same results, slower on CPUs)", RuntimeWarning, stacklevel=3)
    return _lib


def layout(t: torch.Tensor) -> Optional[int]:
    """1 for a channels_last_3d 5-D tensor, 0 for a contiguous one, None for any other layout."""
    if t.is_contiguous():
        return 0
    if t.is_contiguous(memory_format=torch.channels_last_3d):
        return 1
    return None


def usable(*maps: torch.Tensor) -> Optional[int]:
    """The common layout (0/1) of 5-D float32 CPU maps the kernels can take, else None."""
    if not maps or any(t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 5 for t in maps):
        return None
    lay = {layout(t) for t in maps}
    if len(lay) != 1 or None in lay:
        return None
    if cpu_kernels() is None:
        return None
    return lay.pop()


def ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


LINEAR_MAX_N = 8  # the transform's kernels take up to this many rows (clips); torch's GEMM beyond


def _linear_ok(x: torch.Tensor, w: torch.Tensor, *more: Optional[torch.Tensor]) -> bool:
    ts = [x, w, *[t for t in more if t is not None]]
    return (x.dim() == 2 and w.dim() == 2 and x.shape[0] <= LINEAR_MAX_N and x.shape[1] == w.shape[1]
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in ts)
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and cpu_kernels() is not None)


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, w, b) for x (N, K), w (R, K): the C kernel at small N on float32 CPU tensors
    (one multithreaded pass over w), else F.linear. No autograd (callers differentiate by hand)."""
    if not _linear_ok(x, w, b):
        return torch.nn.functional.linear(x, w, b)
    (n, k), r = x.shape, w.shape[0]
    y = x.new_empty(n, r)  # (N, R)
    cpu_kernels().gc_linear_forward(w.data_ptr(), x.data_ptr(), ptr(b), n, r, k, torch.get_num_threads(), y.data_ptr())
    return y


def linear_backward(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, need_w: bool = True):
    """Gradients of y = F.linear(x, w, b) given g = dL/dy (N, R): (dL/dw (R, K) or None, dL/dx (N, K)),
    in one pass over w with the C kernel at small N on float32 CPU tensors, else two torch GEMMs."""
    if not _linear_ok(x, w, g) or g.shape != (x.shape[0], w.shape[0]):
        return (g.t() @ x if need_w else None), g @ w
    (n, k), r = x.shape, w.shape[0]
    gw = w.new_empty(r, k) if need_w else None
    dx = x.new_empty(n, k)  # (N, K)
    cpu_kernels().gc_linear_backward(w.data_ptr(), x.data_ptr(), g.data_ptr(), n, r, k, torch.get_num_threads(),
                            ptr(gw), dx.data_ptr())
    return gw, dx
