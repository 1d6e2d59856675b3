"""The C kernels of the GC block (``_gc_kernels.c``), built on first use and called through checked wrappers.

The C source is compiled once per machine with the system C compiler (``$CC`` or ``gcc``,
``-O3 -march=native -fopenmp``; about a second) into a cache folder, and loaded with ctypes.
The library links the OpenMP runtime PyTorch has already loaded (``libgomp.so.1``), so it uses
the same threads. Where no compiler is found, or the build fails, or ``GCVIDEO_CPU_KERNELS=0``,
or the library on disk is not trusted (below), the blocks use their torch-op path (same math)
after one ``RuntimeWarning`` that gives the reason.

Cache folder: ``$GCVIDEO_KERNEL_DIR``, else ``$XDG_CACHE_HOME/gcvideo`` (``~/.cache/gcvideo``), else
``$TMPDIR/gcvideo-<uid>``. The file name holds a hash of the source, the flags and this CPU's model
and feature flags, so machines with different CPUs that share a home folder build their own copy.

Trust (a library's constructor runs on load, with this process's rights):
- folders gcvideo creates are mode 0700 and the library 0600, whatever the umask;
- a cache folder is used only if this user owns it and nobody else can write to it, and every
  folder above it is owned by this user or root and writable by nobody else, or is sticky
  (``/tmp``); otherwise the next candidate folder is tried;
- an existing library is loaded only if it is a regular file (not a link) that this user owns
  and nobody else can write; otherwise it is refused (``UntrustedKernelError``, shown in the
  warning with the path: delete the file to rebuild it) and the torch-op path is used.

Every wrapper checks its arguments (dtype float32, CPU, plain tensor, shape, memory layout,
sizes) before handing pointers to C, so a mismatch raises ``KernelArgumentError`` rather than
reading or writing out of bounds.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from typing import Optional, Sequence

import torch

__all__ = ["cpu_kernels", "usable", "linear", "linear_backward", "transform_forward", "transform_backward",
           "block_forward", "block_backward", "pool_forward", "pool_backward", "add_relu", "relu_grad_sum",
           "KernelArgumentError", "UntrustedKernelError", "LINEAR_MAX_N"]

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


class UntrustedKernelError(RuntimeError):
    """A kernel library or one of its folders could be written (or is owned) by another user."""


class KernelArgumentError(ValueError):
    """A tensor handed to a C kernel has the wrong dtype, device, shape or layout."""


# ---------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------
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


def _others_can_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def untrusted_reason(path: str, is_file: bool = False) -> Optional[str]:
    """Why ``path`` (the kernel library, or its cache folder) must not be trusted, or None.

    The path itself must be this user's and writable by nobody else (a regular file, not a
    link, for the library); every folder above it must be owned by this user or root and be
    writable by nobody else, unless it is a sticky folder such as /tmp (where others cannot
    rename or remove what is ours)."""
    uid = os.getuid()
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    kind = "file" if is_file else "folder"
    if is_file and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if not is_file and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if st.st_uid != uid:
        return f"the {kind} {path} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if _others_can_write(st):
        return f"the {kind} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    d = os.path.dirname(os.path.realpath(path))
    while True:
        st = os.stat(d)
        if st.st_uid not in (uid, 0):
            return f"the folder {d} above {path} is owned by uid {st.st_uid} (neither this user nor root)"
        if _others_can_write(st) and not st.st_mode & stat.S_ISVTX:
            return f"the folder {d} above {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _make_private_dir(folder: str) -> None:
    """Create ``folder`` and any missing parents with mode 0700, whatever the umask."""
    folder = os.path.abspath(folder)
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made by a concurrent build; its owner and mode are checked by the caller
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask; the umask cannot widen it


def _compile(cc: str, path: str) -> None:
    """Compile the source to ``path`` through a temporary file in the same (private) folder, mode 0600."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        proc = subprocess.run([cc, *_FLAGS, "-o", tmp, _SRC], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed:\n{proc.stderr[-2000:]}")
        os.chmod(tmp, 0o600)  # the compiler's output follows the umask (0777 under umask 000)
        os.replace(tmp, path)  # atomic: concurrent builds (test workers) both end with a whole file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _build(cc: str) -> str:
    """The path of a trusted library for this source, compiler and CPU, built if needed."""
    with open(_SRC, "rb") as f:
        src = f.read()
    key = hashlib.sha256(src + " ".join([cc] + _FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    skipped = []
    for folder in (_cache_dir(), os.path.join(tempfile.gettempdir(), f"gcvideo-{os.getuid()}")):
        path = os.path.join(folder, f"gc_kernels_{key}.so")
        try:
            _make_private_dir(folder)
        except PermissionError as e:  # read-only cache folder: try the temporary folder
            skipped.append(f"{folder}: {e.strerror}")
            continue
        why = untrusted_reason(folder)
        if why is not None:
            skipped.append(why)
            continue
        if not os.path.lexists(path):
            _compile(cc, path)
        why = untrusted_reason(path, is_file=True)
        if why is not None:
            raise UntrustedKernelError(f"refusing to load the kernel library: {why}; delete it to rebuild")
        return path
    raise RuntimeError("no private folder for the kernels (" + "; ".join(skipped) + "); set GCVIDEO_KERNEL_DIR")


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
    except Exception as e:  # no compiler, a failed build, an untrusted file, a library that does not load
        warnings.warn(f"gcvideo: the fused CPU kernels of the GC block are not available ({e}); "
                      "using the torch-op path (same results, slower on CPUs)", RuntimeWarning, stacklevel=3)
    return _lib


# ---------------------------------------------------------------------------
# Which tensors the kernels take, and the checks before every call
# ---------------------------------------------------------------------------
def layout(t: torch.Tensor) -> Optional[int]:
    """1 for a channels_last_3d 5-D tensor, 0 for a contiguous one, None for any other layout."""
    if t.is_contiguous():
        return 0
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return 1
    return None


def usable(*maps: torch.Tensor) -> Optional[int]:
    """The common layout (0/1) of 5-D float32 CPU maps the kernels can take, else None."""
    if not maps or any(type(t) is not torch.Tensor or t.device.type != "cpu" or t.dtype != torch.float32
                       or t.dim() != 5 for t in maps):
        return None
    lay = {layout(t) for t in maps}
    if len(lay) != 1 or None in lay:
        return None
    if cpu_kernels() is None:
        return None
    return lay.pop()


def _ptr(name: str, t: Optional[torch.Tensor], shape: Sequence[int], lay: int = 0,
         optional: bool = False) -> Optional[int]:
    """The data pointer of ``t`` once it is checked to be a dense float32 CPU array of ``shape``
    in layout ``lay`` (1: channels_last_3d, 5-D only); None for an optional absent tensor."""
    if t is None:
        if optional:
            return None
        raise KernelArgumentError(f"{name}: a tensor is required")
    if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise KernelArgumentError(f"{name}: a plain torch.Tensor is required, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise KernelArgumentError(f"{name}: dtype {t.dtype}, expected torch.float32")
    if t.device.type != "cpu":
        raise KernelArgumentError(f"{name}: device {t.device}, expected cpu")
    shape = tuple(int(s) for s in shape)
    if tuple(t.shape) != shape:
        raise KernelArgumentError(f"{name}: shape {tuple(t.shape)}, expected {shape}")
    if lay not in (0, 1) or (lay == 1 and t.dim() != 5):
        raise KernelArgumentError(f"{name}: layout {lay!r} (0 contiguous, 1 channels_last_3d for 5-D maps)")
    fmt = torch.channels_last_3d if lay else torch.contiguous_format
    if not t.is_contiguous(memory_format=fmt):
        raise KernelArgumentError(f"{name}: strides {t.stride()} are not those of a "
                                  f"{'channels_last_3d' if lay else 'contiguous'} {shape} array")
    if t.numel() == 0:
        raise KernelArgumentError(f"{name}: empty tensor of shape {shape}")
    return t.data_ptr()


def _sizes(**sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise KernelArgumentError(f"sizes must be positive integers: {bad}")


def _map_sizes(name: str, y: torch.Tensor):
    """(N, C, L) of a 5-D map (N, C, T, H, W), L = T*H*W."""
    if not isinstance(y, torch.Tensor) or y.dim() != 5:
        raise KernelArgumentError(f"{name}: expected a 5-D map (N, C, T, H, W), got "
                                  f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    n, c, t, h, w = (int(s) for s in y.shape)
    _sizes(N=n, C=c, L=t * h * w)
    return n, c, t * h * w


def _threads() -> int:
    return max(1, int(torch.get_num_threads()))


def pool_forward(x: torch.Tensor, w: torch.Tensor, bias: float, lay: int, ctx: torch.Tensor,
                 p: torch.Tensor) -> None:
    """Attention pooling in one pass (online softmax): writes ctx (N, C) and p (N, L).
    x: (N, C, T, H, W) in layout ``lay``; w: (C,); bias: a float."""
    n, c, l = _map_sizes("x", x)
    args = (_ptr("x", x, x.shape, lay), _ptr("w", w, (c,)), float(bias), n, c, l, lay, _threads(),
            _ptr("ctx", ctx, (n, c)), _ptr("p", p, (n, l)))
    cpu_kernels().gc_pool_forward(*args)


def pool_backward(y: torch.Tensor, g: Optional[torch.Tensor], p: torch.Tensor, gctx: torch.Tensor,
                  ctx: torch.Tensor, w: torch.Tensor, lay: int, grad_y: Optional[torch.Tensor],
                  gw: torch.Tensor, gb: torch.Tensor) -> None:
    """The pooling backward in one pass over y (and g; None = 0): writes grad_y = g + p gctx + gl w
    (if given, y's shape and layout), gw (C,) and gb (1,)."""
    n, c, l = _map_sizes("y", y)
    args = (_ptr("y", y, y.shape, lay), _ptr("g", g, y.shape, lay, optional=True), _ptr("p", p, (n, l)),
            _ptr("gctx", gctx, (n, c)), _ptr("ctx", ctx, (n, c)), _ptr("w", w, (c,)), n, c, l, lay, _threads(),
            _ptr("grad_y", grad_y, y.shape, lay, optional=True), _ptr("gw", gw, (c,)), _ptr("gb", gb, (1,)))
    cpu_kernels().gc_pool_backward(*args)


def add_relu(y: torch.Tensor, s: torch.Tensor, t: torch.Tensor, out: torch.Tensor, lay: int) -> None:
    """out = relu(y + s + t) in one pass; y, s, out: (N, C, T, H, W) in layout ``lay``; t: (N, C)."""
    n, c, l = _map_sizes("y", y)
    args = (_ptr("y", y, y.shape, lay), _ptr("s", s, y.shape, lay), _ptr("t", t, (n, c)),
            _ptr("out", out, y.shape, lay), n, c, l, lay, _threads())
    cpu_kernels().gc_add_relu(*args)


def relu_grad_sum(gout: torch.Tensor, out: torch.Tensor, g: torch.Tensor, gsum: torch.Tensor, lay: int) -> None:
    """g = gout where out > 0 else 0, gsum (N, C) = g summed over positions, in one pass."""
    n, c, l = _map_sizes("out", out)
    args = (_ptr("gout", gout, out.shape, lay), _ptr("out", out, out.shape, lay), _ptr("g", g, out.shape, lay),
            _ptr("gsum", gsum, (n, c)), n, c, l, lay, _threads())
    cpu_kernels().gc_relu_grad_sum(*args)


LINEAR_MAX_N = 8  # the transform's kernels take up to this many rows (clips); torch's GEMM beyond


def _linear_ok(x: torch.Tensor, w: torch.Tensor, *more: Optional[torch.Tensor]) -> bool:
    ts = [x, w, *[t for t in more if t is not None]]
    return (x.dim() == 2 and w.dim() == 2 and x.shape[0] <= LINEAR_MAX_N and x.shape[1] == w.shape[1]
            and all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
                    and t.dtype == torch.float32 and t.is_contiguous() for t in ts)
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and cpu_kernels() is not None)


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, w, b) for x (N, K), w (R, K): the C kernel at small N on float32 CPU tensors
    (one multithreaded pass over w), else F.linear. No autograd (callers differentiate by hand)."""
    if not _linear_ok(x, w, b):
        return torch.nn.functional.linear(x, w, b)
    (n, k), r = x.shape, w.shape[0]
    y = x.new_empty(n, r)  # (N, R)
    args = (_ptr("w", w, (r, k)), _ptr("x", x, (n, k)), _ptr("b", b, (r,), optional=True), n, r, k, _threads(),
            _ptr("y", y, (n, r)))
    cpu_kernels().gc_linear_forward(*args)
    return y


def linear_backward(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, need_w: bool = True):
    """Gradients of y = F.linear(x, w, b) given g = dL/dy (N, R): (dL/dw (R, K) or None, dL/dx (N, K)),
    in one pass over w with the C kernel at small N on float32 CPU tensors, else two torch GEMMs."""
    if not _linear_ok(x, w, g) or g.shape != (x.shape[0], w.shape[0]):
        return (g.t() @ x if need_w else None), g @ w
    (n, k), r = x.shape, w.shape[0]
    gw = w.new_empty(r, k) if need_w else None
    dx = x.new_empty(n, k)  # (N, K)
    args = (_ptr("w", w, (r, k)), _ptr("x", x, (n, k)), _ptr("g", g, (n, r)), n, r, k, _threads(),
            _ptr("gw", gw, (r, k), optional=True), _ptr("dx", dx, (n, k)))
    cpu_kernels().gc_linear_backward(*args)
    return gw, dx


def _transform_ok(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, lnw: Optional[torch.Tensor],
                  lnb: Optional[torch.Tensor], w2: torch.Tensor, b2: torch.Tensor) -> bool:
    return _linear_ok(x, w1, b1, lnw, lnb, w2, b2) and w2.shape == (x.shape[1], w1.shape[0])


def _transform_ptrs(c: int, cr: int, w1, b1, lnw, lnb, w2, b2):
    """Checked pointers of the transform's parameters: W1 (Cr, C), b1 (Cr,), lnw/lnb (Cr,) or both None,
    W2 (C, Cr), b2 (C,)."""
    if (lnw is None) != (lnb is None):
        raise KernelArgumentError("lnw and lnb: both tensors or both None")
    return dict(w1=_ptr("W1", w1, (cr, c)), b1=_ptr("b1", b1, (cr,)), lnw=_ptr("lnw", lnw, (cr,), optional=True),
                lnb=_ptr("lnb", lnb, (cr,), optional=True), w2=_ptr("W2", w2, (c, cr)), b2=_ptr("b2", b2, (c,)))


def transform_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, lnw: Optional[torch.Tensor],
                      lnb: Optional[torch.Tensor], eps: float, w2: torch.Tensor, b2: torch.Tensor):
    """The bottleneck transform (conv C->Cr, [LayerNorm], ReLU, conv Cr->C as matrices) on x (N, C)
    in one C call: (t (N, C), saved for ``transform_backward``), or None where the kernel does not
    apply (then the caller runs torch ops). w1 (Cr, C), w2 (C, Cr); lnw/lnb (Cr,) or None."""
    if not _transform_ok(x, w1, b1, lnw, lnb, w2, b2):
        return None
    (n, c), cr = x.shape, w1.shape[0]
    _sizes(N=n, C=c, Cr=cr)
    hn, r, rstd, t = x.new_empty(n, cr), x.new_empty(n, cr), x.new_empty(n), x.new_empty(n, c)
    q = _transform_ptrs(c, cr, w1, b1, lnw, lnb, w2, b2)
    args = (_ptr("x", x, (n, c)), q["w1"], q["b1"], q["lnw"], q["lnb"], float(eps), q["w2"], q["b2"], n, c, cr,
            _threads(), _ptr("hn", hn, (n, cr)), _ptr("rstd", rstd, (n,)), _ptr("r", r, (n, cr)),
            _ptr("t", t, (n, c)))
    cpu_kernels().gc_transform_forward(*args)
    return t, (x, hn, rstd, r)


def transform_backward(saved, g: torch.Tensor, w1: torch.Tensor, lnw: Optional[torch.Tensor], w2: torch.Tensor,
                       need_w1: bool = True, need_w2: bool = True):
    """Backward of ``transform_forward`` from g = dL/dt (N, C): (dL/dx, [gW1, gb1, glnw, glnb, gW2, gb2])
    (glnw/glnb None without LayerNorm, gW None where not needed)."""
    x, hn, rstd, r = saved
    (n, c), cr = x.shape, w1.shape[0]
    _sizes(N=n, C=c, Cr=cr)
    g = g.float().contiguous()
    gw1 = x.new_empty(cr, c) if need_w1 else None
    gw2 = x.new_empty(c, cr) if need_w2 else None
    gb1, gb2, dx, work = x.new_empty(cr), x.new_empty(c), x.new_empty(n, c), x.new_empty(2 * n * cr)
    glnw, glnb = (x.new_empty(cr), x.new_empty(cr)) if lnw is not None else (None, None)
    args = (_ptr("x", x, (n, c)), _ptr("W1", w1, (cr, c)), _ptr("lnw", lnw, (cr,), optional=True),
            _ptr("W2", w2, (c, cr)), _ptr("hn", hn, (n, cr)), _ptr("rstd", rstd, (n,)), _ptr("r", r, (n, cr)),
            _ptr("g", g, (n, c)), n, c, cr, _threads(), _ptr("gW1", gw1, (cr, c), optional=True),
            _ptr("gb1", gb1, (cr,)), _ptr("glnw", glnw, (cr,), optional=True),
            _ptr("glnb", glnb, (cr,), optional=True), _ptr("gW2", gw2, (c, cr), optional=True),
            _ptr("gb2", gb2, (c,)), _ptr("dx", dx, (n, c)), _ptr("work", work, (2 * n * cr,)))
    cpu_kernels().gc_transform_backward(*args)
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
    n, c, l = _map_sizes("y", y)
    cr = w1.shape[0]
    p, hn, r, rstd, t, out = (y.new_empty(n, l), y.new_empty(n, cr), y.new_empty(n, cr), y.new_empty(n),
                              y.new_empty(n, c), torch.empty_like(y))
    if b is not None and tuple(b.shape) != (1,):
        raise KernelArgumentError(f"b: shape {tuple(b.shape)}, expected (1,)")
    bias = float(b.detach()) if b is not None else 0.0
    q = _transform_ptrs(c, cr, w1, b1, lnw, lnb, w2, b2)
    args = (_ptr("y", y, y.shape, lay), _ptr("s", s, y.shape, lay), _ptr("w", w, (c,)), bias, q["w1"], q["b1"],
            q["lnw"], q["lnb"], float(eps), q["w2"], q["b2"], n, c, cr, l, lay, _threads(), _ptr("ctx", ctx, (n, c)),
            _ptr("p", p, (n, l)), _ptr("hn", hn, (n, cr)), _ptr("rstd", rstd, (n,)), _ptr("r", r, (n, cr)),
            _ptr("t", t, (n, c)), _ptr("out", out, y.shape, lay))
    cpu_kernels().gc_block_forward(*args)
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
    n, c, l = _map_sizes("y", y)
    cr = w1.shape[0]
    g, grad_y = torch.empty_like(y), torch.empty_like(y)
    gw1, gb1, gw2, gb2 = y.new_empty(cr, c), y.new_empty(cr), y.new_empty(c, cr), y.new_empty(c)
    glnw, glnb = (y.new_empty(cr), y.new_empty(cr)) if lnw is not None else (None, None)
    gw, gb, work = y.new_empty(c), y.new_empty(1), y.new_empty(2 * n * c + 2 * n * cr)
    args = (_ptr("gout", gout, y.shape, lay), _ptr("out", out, y.shape, lay), _ptr("y", y, y.shape, lay),
            _ptr("p", p, (n, l)), _ptr("ctx", ctx, (n, c)), _ptr("w", w, (c,)), _ptr("W1", w1, (cr, c)),
            _ptr("lnw", lnw, (cr,), optional=True), _ptr("W2", w2, (c, cr)), _ptr("hn", hn, (n, cr)),
            _ptr("rstd", rstd, (n,)), _ptr("r", r, (n, cr)), n, c, cr, l, lay, _threads(),
            _ptr("g", g, y.shape, lay), _ptr("grad_y", grad_y, y.shape, lay), _ptr("gW1", gw1, (cr, c)),
            _ptr("gb1", gb1, (cr,)), _ptr("glnw", glnw, (cr,), optional=True),
            _ptr("glnb", glnb, (cr,), optional=True), _ptr("gW2", gw2, (c, cr)), _ptr("gb2", gb2, (c,)),
            _ptr("gw", gw, (c,)), _ptr("gb", gb, (1,)), _ptr("work", work, (2 * n * c + 2 * n * cr,)))
    cpu_kernels().gc_block_backward(*args)
    return g, grad_y, [gw1, gb1, glnw, glnb, gw2, gb2], gw, gb
