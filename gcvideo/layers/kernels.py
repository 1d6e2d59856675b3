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
    # y, g, p, gctx, ctx, w, N, C, L, cl, nt, grad_y, gw, gb
    "gc_pool_backward": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT, _P, _P, _P],
    # W, x, b, N, R, K, nt, y
    "gc_linear_forward": [_P, _P, _P, _I64, _I64, _I64, _INT, _P],
    # W, x, g, N, R, K, nt, gW, dx
    "gc_linear_backward": [_P, _P, _P, _I64, _I64, _I64, _INT, _P, _P],
    # x, W1, b1, lnw, lnb, eps, W2, b2, N, C, Cr, nt, hn, rstd, r, t
    "gc_transform_forward": [_P, _P, _P, _P, _P, _F, _P, _P, _I64, _I64, _I64, _INT, _P, _P, _P, _P],
    # x, W1, lnw, W2, hn, rstd, r, g, N, C, Cr, nt, gW1, gb1, glnw, glnb, gW2, gb2, dx, work
    "gc_transform_backward": [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT,
                              _P, _P, _P, _P, _P, _P, _P, _P],
    # y, s, w, bias, W1, b1, lnw, lnb, eps, W2, b2, N, C, Cr, L, cl, nt, ctx, p, hn, rstd, r, t, out
    "gc_block_forward": [_P, _P, _P, _F, _P, _P, _P, _P, _F, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT,
                         _P, _P, _P, _P, _P, _P, _P],
    # gout, out, y, p, ctx, w, W1, lnw, W2, hn, rstd, r, N, C, Cr, L, cl, nt,
    # g, grad_y, gW1, gb1, glnw, glnb, gW2, gb2, gw, gb, work
    "gc_block_backward": [_P] * 12 + [_I64, _I64, _I64, _I64, _INT, _INT] + [_P] * 11,
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


def _transform_ok(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, lnw: Optional[torch.Tensor],
                  lnb: Optional[torch.Tensor], w2: torch.Tensor, b2: torch.Tensor) -> bool:
    return _linear_ok(x, w1, b1, lnw, lnb, w2, b2) and w2.shape == (x.shape[1], w1.shape[0])


def transform_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, lnw: Optional[torch.Tensor],
                      lnb: Optional[torch.Tensor], eps: float, w2: torch.Tensor, b2: torch.Tensor):
    """The bottleneck transform (conv C->Cr, [LayerNorm], ReLU, conv Cr->C as matrices) on x (N, C)
    in one C call: (t (N, C), saved for ``transform_backward``), or None where the kernel does not
    apply (then the caller runs torch ops). w1 (Cr, C), w2 (C, Cr); lnw/lnb (Cr,) or None."""
    if not _transform_ok(x, w1, b1, lnw, lnb, w2, b2):
        return None
    (n, c), cr = x.shape, w1.shape[0]
    hn, r, rstd, t = x.new_empty(n, cr), x.new_empty(n, cr), x.new_empty(n), x.new_empty(n, c)
    cpu_kernels().gc_transform_forward(x.data_ptr(), w1.data_ptr(), b1.data_ptr(), ptr(lnw), ptr(lnb), eps,
                                       w2.data_ptr(), b2.data_ptr(), n, c, cr, torch.get_num_threads(),
                                       hn.data_ptr(), rstd.data_ptr(), r.data_ptr(), t.data_ptr())
    return t, (x, hn, rstd, r)


def transform_backward(saved, g: torch.Tensor, w1: torch.Tensor, lnw: Optional[torch.Tensor], w2: torch.Tensor,
                       need_w1: bool = True, need_w2: bool = True):
    """Backward of ``transform_forward`` from g = dL/dt (N, C): (dL/dx, [gW1, gb1, glnw, glnb, gW2, gb2])
    (glnw/glnb None without LayerNorm, gW None where not needed)."""
    x, hn, rstd, r = saved
    (n, c), cr = x.shape, w1.shape[0]
    g = g.float().contiguous()
    gw1 = x.new_empty(cr, c) if need_w1 else None
    gw2 = x.new_empty(c, cr) if need_w2 else None
    gb1, gb2, dx, work = x.new_empty(cr), x.new_empty(c), x.new_empty(n, c), x.new_empty(2 * n * cr)
    glnw, glnb = (x.new_empty(cr), x.new_empty(cr)) if lnw is not None else (None, None)
    cpu_kernels().gc_transform_backward(x.data_ptr(), w1.data_ptr(), ptr(lnw), w2.data_ptr(), hn.data_ptr(),
                                        rstd.data_ptr(), r.data_ptr(), g.data_ptr(), n, c, cr,
                                        torch.get_num_threads(), ptr(gw1), gb1.data_ptr(), ptr(glnw), ptr(glnb),
                                        ptr(gw2), gb2.data_ptr(), dx.data_ptr(), work.data_ptr())
    return dx, [gw1, gb1, glnw, glnb, gw2, gb2]


def block_forward(y: torch.Tensor, s: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], w1: torch.Tensor,
                  b1: torch.Tensor, lnw: Optional[torch.Tensor], lnb: Optional[torch.Tensor], eps: float,
                  w2: torch.Tensor, b2: torch.Tensor):
    """relu(y + s + GC term(y)) for a bottleneck GC block in one C call: (out, context (N, C),
    p (N, L), saved for ``transform_backward``), or None where the kernels do not apply.
    y, s: (N, C, T, H, W) float32 CPU maps of one layout; w (C,) and b (1,) or None: the attention
    conv; w1 (Cr, C), b1, lnw, lnb (Cr,) or None, w2 (C, Cr), b2 (C,): the transform."""
    lay = usable(y, s)
    (n, c), l = y.shape[:2], y[0, 0].numel()
    ctx = y.new_empty(n, c)
    if lay is None or w.numel() != c or not w.is_contiguous() or not _transform_ok(ctx, w1, b1, lnw, lnb, w2, b2):
        return None
    cr = w1.shape[0]
    p, hn, r, rstd, t, out = (y.new_empty(n, l), y.new_empty(n, cr), y.new_empty(n, cr), y.new_empty(n),
                              y.new_empty(n, c), torch.empty_like(y))
    cpu_kernels().gc_block_forward(y.data_ptr(), s.data_ptr(), w.data_ptr(), float(b.detach()) if b is not None else 0.0,
                                   w1.data_ptr(), b1.data_ptr(), ptr(lnw), ptr(lnb), eps, w2.data_ptr(),
                                   b2.data_ptr(), n, c, cr, l, lay, torch.get_num_threads(), ctx.data_ptr(),
                                   p.data_ptr(), hn.data_ptr(), rstd.data_ptr(), r.data_ptr(), t.data_ptr(),
                                   out.data_ptr())
    return out, ctx, p, (ctx, hn, rstd, r)


def block_backward(gout: torch.Tensor, out: torch.Tensor, y: torch.Tensor, p: torch.Tensor, w: torch.Tensor,
                   saved, w1: torch.Tensor, lnw: Optional[torch.Tensor], w2: torch.Tensor):
    """Backward of ``block_forward`` in one C call: (g = dL/ds, dL/dy, [gW1, gb1, glnw, glnb, gW2, gb2],
    dL/dw (C,), dL/db (1,)), or None where the kernels do not apply (then the caller takes the
    separate kernels / torch ops). A gout in another layout than y is copied into y's first."""
    lay = usable(y, out)
    if lay is None:
        return None
    if layout(gout) != lay:  # e.g. the expanded gradient of a global average pool: one copy of a small map
        gout = gout.contiguous(memory_format=torch.channels_last_3d if lay else torch.contiguous_format)
    if usable(gout) != lay:
        return None
    ctx, hn, rstd, r = saved
    (n, c), l, cr = y.shape[:2], y[0, 0].numel(), w1.shape[0]
    g, grad_y = torch.empty_like(y), torch.empty_like(y)
    gw1, gb1, gw2, gb2 = y.new_empty(cr, c), y.new_empty(cr), y.new_empty(c, cr), y.new_empty(c)
    glnw, glnb = (y.new_empty(cr), y.new_empty(cr)) if lnw is not None else (None, None)
    gw, gb, work = y.new_empty(c), y.new_empty(1), y.new_empty(2 * n * c + 2 * n * cr)
    cpu_kernels().gc_block_backward(
        gout.data_ptr(), out.data_ptr(), y.data_ptr(), p.data_ptr(), ctx.data_ptr(), w.data_ptr(), w1.data_ptr(),
        ptr(lnw), w2.data_ptr(), hn.data_ptr(), rstd.data_ptr(), r.data_ptr(), n, c, cr, l, lay,
        torch.get_num_threads(), g.data_ptr(), grad_y.data_ptr(), gw1.data_ptr(), gb1.data_ptr(), ptr(glnw),
        ptr(glnb), gw2.data_ptr(), gb2.data_ptr(), gw.data_ptr(), gb.data_ptr(), work.data_ptr())
    return g, grad_y, [gw1, gb1, glnw, glnb, gw2, gb2], gw, gb
