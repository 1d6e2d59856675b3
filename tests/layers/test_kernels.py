"""The fused CPU kernels of attention pooling (gcvideo/layers/fused/_gc_kernels.c) against float64.

float32 blocks that run the kernels (both memory formats, every add-fusion variant with
attention pooling, with and without the residual ReLU, the pooling Function alone) against
the plain autograd path in float64; the same numbers with the kernels off, with one or two
threads, and for logits large enough to overflow a naive softmax; the build's fallback.
"""
import os
import subprocess
import sys

import pytest
import torch

from gcvideo.layers import ContextBlock
from gcvideo.layers.fused import kernels as K

needs_kernels = pytest.mark.skipif(K.cpu_kernels() is None, reason="no C compiler here: torch-op path only")
pytestmark = needs_kernels

# L = 3*10*9 = 270: not a multiple of the (C, L) layout's position blocks, split over threads
SHAPES = [(2, 16, 3, 10, 9), (1, 64, 2, 7, 5), (3, 32, 1, 1, 1)]


class _Spy:
    """Counts the kernel calls (ctypes functions cannot be patched one by one)."""

    def __init__(self, lib):
        self.lib, self.calls = lib, []

    def __getattr__(self, name):
        fn = getattr(self.lib, name)

        def call(*args):
            self.calls.append(name)
            return fn(*args)
        return call


@pytest.fixture
def spy(monkeypatch):
    s = _Spy(K.cpu_kernels())
    monkeypatch.setattr(K, "cpu_kernels", lambda: s)
    return s


def _blocks(c, transform="bottleneck", norm="layernorm", fusion="add", scale=0.5, seed=0, att_bias=True):
    """(float32 fused block, float64 reference-path block) with the same random weights."""
    kw = dict(transform=transform, norm=norm, fusion=fusion, att_bias=att_bias)
    ref = ContextBlock(c, 0.25, fused=False, **kw).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    fused = ContextBlock(c, 0.25, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    return fused, ref


def _run(block, x, s, gout):
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    s = None if s is None else s.detach().clone().requires_grad_()
    out = block(x) if s is None else block.residual(x, s)
    out.backward(gout)
    grads = {"out": out.detach(), "x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}
    if s is not None:
        grads["shortcut"] = s.grad
    return grads


def _errors(got, want):
    """max |got - want| per tensor over its scale (1% of the largest gradient at least: the
    attention-conv bias has an exactly zero gradient, softmax being shift-invariant)."""
    assert got.keys() == want.keys()
    top = max(v.abs().max().item() for v in want.values())
    return {k: (got[k].double() - want[k]).abs().max().item() / max(want[k].abs().max().item(), 1e-2 * top)
            for k in want}


def _close(got, want, torch_path=None, rtol=2e-5):
    """Within rtol of float64, or (ill-conditioned attention gradients: dL/dlogits is a difference of
    nearly equal terms) within 4x the error of the torch-op float32 path on the same input."""
    err = _errors(got, want)
    base = _errors(torch_path, want) if torch_path is not None else {k: 0.0 for k in err}
    bad = {k: (e, base[k]) for k, e in err.items() if e > max(rtol, 4 * base[k])}
    assert not bad, f"relative errors (kernels, torch path): {bad}"


def _torch_path(monkeypatch, block, *args):
    with monkeypatch.context() as m:
        m.setattr(K, "cpu_kernels", lambda: None)
        return _run(block, *args)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("transform,norm", [("bottleneck", "layernorm"), ("bottleneck", "none"), ("linear", "none")])
def test_kernels_match_float64_reference(shape, memory_format, residual, transform, norm, spy, monkeypatch):
    fused, ref = _blocks(shape[1], transform, norm)
    torch.manual_seed(1)
    x, s, gout = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    want = _run(ref, x, s if residual else None, gout)
    on = lambda t: t.float().contiguous(memory_format=memory_format)  # noqa: E731
    args = (on(x), on(s) if residual else None, on(gout))
    got = _run(fused, *args)
    assert got["x"].is_contiguous(memory_format=memory_format)
    tf = "gc_transform" if transform == "bottleneck" else "gc_linear"  # the whole transform in one call
    expected = ["gc_pool_forward", f"{tf}_forward"] + (["gc_add_relu", "gc_relu_grad_sum"] if residual
                                                       else []) + [f"{tf}_backward", "gc_pool_backward"]
    if residual and transform == "bottleneck":  # the GC block at the pre-add position: one call each way
        expected = ["gc_block_forward", "gc_block_backward"]
    assert spy.calls == expected
    _close(got, want, _torch_path(monkeypatch, fused, *args))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_pooling_function_alone_mul_fusion(memory_format, spy, monkeypatch):
    fused, ref = _blocks(16, fusion="mul")
    x, gout = torch.randn(2, 16, 3, 10, 9, dtype=torch.float64), torch.randn(2, 16, 3, 10, 9, dtype=torch.float64)
    want = _run(ref, x, None, gout)
    args = (x.float().contiguous(memory_format=memory_format), None, gout.float().contiguous(memory_format=memory_format))
    got = _run(fused, *args)
    assert spy.calls == ["gc_pool_forward", "gc_pool_backward"]
    _close(got, want, _torch_path(monkeypatch, fused, *args))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_one_or_two_threads_same_numbers(memory_format):
    fused, _ = _blocks(64, scale=0.2)
    torch.manual_seed(2)
    x, s, gout = (torch.randn(2, 64, 4, 9, 7).contiguous(memory_format=memory_format) for _ in range(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _run(fused, x, s, gout)
        torch.set_num_threads(1)
        one = _run(fused, x, s, gout)
    finally:
        torch.set_num_threads(threads)
    top = max(v.abs().max().item() for v in one.values())
    for k in one:  # only the order of float32 sums differs
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6 * top, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("residual", [False, True])
def test_online_softmax_with_huge_logits(memory_format, residual, monkeypatch):
    """Also the case where dL/dy needs the one-pass backward's (cg - sp) correction pass: large w."""
    fused, ref = _blocks(16, scale=0.5)
    with torch.no_grad():  # logits in the thousands: exp() of them overflows float32
        ref.conv_mask.weight.mul_(400)
        fused.conv_mask.weight.copy_(ref.conv_mask.weight)
    x = torch.randn(2, 16, 3, 10, 9, dtype=torch.float64)
    logits = torch.einsum("c,nclhw->nlhw", ref.conv_mask.weight.view(-1), x)
    assert logits.abs().max() > 1000
    gout, s = torch.randn_like(x), (torch.randn_like(x) if residual else None)
    want = _run(ref, x, s, gout)
    on = lambda t: None if t is None else t.float().contiguous(memory_format=memory_format)  # noqa: E731
    args = (on(x), on(s), on(gout))
    got = _run(fused, *args)
    assert all(torch.isfinite(v).all() for v in got.values())
    _close(got, want, _torch_path(monkeypatch, fused, *args))


def test_mixed_layouts(spy):
    """y and shortcut in different layouts: the forward's add runs as torch ops around the pooling and
    transform kernels; a gradient in another layout than y is copied into y's, then one backward call."""
    fused, ref = _blocks(16)
    x = torch.randn(2, 16, 3, 10, 9)
    s = torch.randn_like(x).contiguous(memory_format=torch.channels_last_3d)  # out follows x: contiguous
    gout = torch.randn_like(x).contiguous(memory_format=torch.channels_last_3d)  # differs from y's layout
    got = _run(fused, x, s, gout)
    assert spy.calls == ["gc_pool_forward", "gc_transform_forward", "gc_block_backward"]
    want = _run(ref, x.double(), s.double(), gout.double())
    _close(got, want, rtol=1e-4)


def test_build_cache_and_fallback_without_compiler(tmp_path):
    code = ("import warnings, torch\n"
            "from gcvideo.layers import ContextBlock\n"
            "from gcvideo.layers.fused import kernels as K\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    lib = K.cpu_kernels()\n"
            "b = ContextBlock(8, 0.25)\n"
            "x = torch.randn(1, 8, 2, 3, 3, requires_grad=True)\n"
            "b.residual(x, torch.randn_like(x)).sum().backward()\n"
            "print('LIB', lib is not None, 'WARN', [str(m.message)[:60] for m in w])\n")
    env = dict(os.environ, GCVIDEO_KERNEL_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    built = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "LIB True WARN []" in built.stdout
    assert [f.suffix for f in (tmp_path / "cache").iterdir()] == [".so"]  # no temporary left behind
    env["CC"] = str(tmp_path / "no-such-compiler")
    env["GCVIDEO_KERNEL_DIR"] = str(tmp_path / "cache2")
    fallback = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert fallback.returncode == 0, fallback.stderr[-2000:]
    assert "LIB False" in fallback.stdout and "fused CPU kernels of the GC block are not avail" in fallback.stdout
    # a cache folder others can write to is not used (a library is loaded from it): the private
    # temporary folder gcvideo-<uid> is used instead
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    env.pop("CC")
    env["GCVIDEO_KERNEL_DIR"] = str(shared)
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "LIB True WARN []" in again.stdout, again.stdout + again.stderr[-2000:]
    assert not list(shared.iterdir())
    private = tmp_path / "tmp" / f"gcvideo-{os.getuid()}"
    assert [f.suffix for f in private.iterdir()] == [".so"] and (private.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("n", [1, 3, K.LINEAR_MAX_N])
@pytest.mark.parametrize("r,k", [(37, 70), (128, 512), (512, 128)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("need_w", [True, False])
def test_linear_kernels_match_float64(n, r, k, threads, need_w, spy):
    """The transform's matrix-vector kernels against float64 matrix products."""
    g = torch.Generator().manual_seed(n * 1000 + r)
    w, x, b, gy = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(r, k), (n, k), (r,), (n, r)])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = K.linear(x.float(), w.float(), b.float())
        y_nobias = K.linear(x.float(), w.float())
        gw, gx = K.linear_backward(w.float(), x.float(), gy.float(), need_w)
    finally:
        torch.set_num_threads(old)
    assert spy.calls == ["gc_linear_forward"] * 2 + ["gc_linear_backward"]
    # float32 dot products of length k (or r): relative to the sum of |terms|
    tol = 1e-6 * max(k, r) ** 0.5 + 1e-6
    torch.testing.assert_close(y.double(), x @ w.t() + b, atol=tol * (x.abs() @ w.abs().t()).max().item(), rtol=0)
    torch.testing.assert_close(y_nobias.double(), x @ w.t(), atol=tol * (x.abs() @ w.abs().t()).max().item(), rtol=0)
    torch.testing.assert_close(gx.double(), gy @ w, atol=tol * (gy.abs() @ w.abs()).max().item(), rtol=0)
    if need_w:
        torch.testing.assert_close(gw.double(), gy.t() @ x, atol=tol * (gy.abs().t() @ x.abs()).max().item(), rtol=0)
    else:
        assert gw is None


def test_linear_beyond_small_batch_uses_torch(spy):
    x, w = torch.randn(K.LINEAR_MAX_N + 1, 16), torch.randn(8, 16)
    y = K.linear(x, w)
    gw, gx = K.linear_backward(w, x, torch.ones(K.LINEAR_MAX_N + 1, 8))
    assert spy.calls == []
    torch.testing.assert_close(y, x @ w.t())
    torch.testing.assert_close(gw, torch.ones(8, K.LINEAR_MAX_N + 1) @ x)
    torch.testing.assert_close(gx, torch.ones(K.LINEAR_MAX_N + 1, 8) @ w)


@pytest.mark.parametrize("frozen", ["channel_add_conv.0.weight", "channel_add_conv.3.weight",
                                    "channel_add_conv.1.weight", "conv_mask.weight"])
@pytest.mark.parametrize("residual", [False, True])
def test_kernels_with_a_frozen_parameter(frozen, residual, spy):
    """A frozen parameter gets no gradient; the others match the float64 reference."""
    fused, ref = _blocks(32)
    for block in (fused, ref):
        block.get_parameter(frozen).requires_grad_(False)
    torch.manual_seed(2)
    x, s, gout = (torch.randn(2, 32, 2, 5, 5, dtype=torch.float64) for _ in range(3))
    want = _run(ref, x, s if residual else None, gout)
    got = _run(fused, x.float(), s.float() if residual else None, gout.float())
    assert ("gc_block_backward" if residual else "gc_transform_backward") in spy.calls
    assert got[frozen] is None and want[frozen] is None
    del got[frozen], want[frozen]
    _close(got, want, rtol=1e-4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_block_kernels_without_attention_bias(memory_format, spy):
    """CONTEXT.ATT_BIAS False: the one-call block kernels take no bias and return no bias gradient."""
    fused, ref = _blocks(32, att_bias=False)
    x, s, gout = (torch.randn(2, 32, 2, 5, 5, dtype=torch.float64) for _ in range(3))
    want = _run(ref, x, s, gout)
    on = lambda t: t.float().contiguous(memory_format=memory_format)  # noqa: E731
    got = _run(fused, on(x), on(s), on(gout))
    assert spy.calls == ["gc_block_forward", "gc_block_backward"] and "conv_mask.bias" not in got
    _close(got, want, rtol=1e-4)


# ---------------------------------------------------------------------------
# Argument checks before any pointer reaches C
# ---------------------------------------------------------------------------
def _map(n=2, c=8, t=2, h=3, w=3, cl=False):
    x = torch.randn(n, c, t, h, w)
    return x.contiguous(memory_format=torch.channels_last_3d) if cl else x


@pytest.mark.parametrize("case", ["dtype", "device", "shape", "strides", "layout", "missing", "empty", "fake"])
def test_pool_forward_refuses_mismatched_arguments(case, spy):
    x, w, ctx, p = _map(), torch.randn(8), torch.empty(2, 8), torch.empty(2, 18)
    lay = 0
    if case == "dtype":
        x = x.double()
    elif case == "device":
        ctx = ctx.to("meta")
    elif case == "shape":
        p = torch.empty(2, 17)  # one position short: the kernel would write past its end
    elif case == "strides":
        x = x.transpose(3, 4)  # neither contiguous nor channels-last
    elif case == "layout":
        lay = 1  # a contiguous map declared channels-last
    elif case == "missing":
        w = None
    elif case == "empty":
        x, p = torch.empty(2, 8, 0, 3, 3), torch.empty(2, 0)
    elif case == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as mode:
            x = mode.from_tensor(x)
    with pytest.raises(K.KernelArgumentError):
        K.pool_forward(x, w, 0.0, lay, ctx, p)
    assert spy.calls == []  # nothing reached C


def test_every_wrapper_checks_its_tensors(spy):
    y, s = _map(), _map()
    n, c, l = 2, 8, 18
    with pytest.raises(K.KernelArgumentError, match="t: shape"):
        K.add_relu(y, s, torch.empty(2, 9), torch.empty_like(y), 0)
    with pytest.raises(K.KernelArgumentError, match="gsum: strides"):
        K.relu_grad_sum(y, s, torch.empty_like(y), torch.empty(c, n).t(), 0)
    with pytest.raises(K.KernelArgumentError, match="grad_y: strides"):
        K.pool_backward(y, None, torch.rand(n, l), torch.randn(n, c), torch.randn(n, c), torch.randn(c), 0,
                        _map(cl=True), torch.empty(c), torch.empty(1))
    with pytest.raises(K.KernelArgumentError, match="gb: shape"):
        K.pool_backward(y, None, torch.rand(n, l), torch.randn(n, c), torch.randn(n, c), torch.randn(c), 0,
                        None, torch.empty(c), torch.empty(2))
    with pytest.raises(K.KernelArgumentError, match="lnw and lnb"):
        K.transform_forward(torch.randn(n, c), torch.randn(2, c), torch.randn(2), torch.ones(2), None, 1e-5,
                            torch.randn(c, 2), torch.randn(c))
    x, w1, w2 = torch.randn(n, c), torch.randn(2, c), torch.randn(c, 2)
    t, saved = K.transform_forward(x, w1, torch.randn(2), None, None, 0.0, w2, torch.randn(c))
    assert spy.calls == ["gc_transform_forward"]
    bad = (saved[0], saved[1][:1], saved[2], saved[3])  # hn of the wrong size
    with pytest.raises(K.KernelArgumentError, match="hn: shape"):
        K.transform_backward(bad, torch.randn(n, c), w1, None, w2)
    assert spy.calls == ["gc_transform_forward"]


# ---------------------------------------------------------------------------
# The compiled library: private, and refused where anyone else could have written it
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A library built under umask 000 in a cache folder whose parents do not exist yet."""
    root = tmp_path_factory.mktemp("kern")
    folder = root / "a" / "b" / "cache"
    old_env, old_mask = os.environ.get("GCVIDEO_KERNEL_DIR"), os.umask(0)
    os.environ["GCVIDEO_KERNEL_DIR"] = str(folder)
    try:
        path = K._build(os.environ.get("CC", "gcc"))
    finally:
        os.umask(old_mask)
        if old_env is None:
            os.environ.pop("GCVIDEO_KERNEL_DIR")
        else:
            os.environ["GCVIDEO_KERNEL_DIR"] = old_env
    return root, folder, path


def test_library_built_under_umask_000_is_private(built):
    root, folder, path = built
    assert os.path.dirname(path) == str(folder)
    assert os.stat(path).st_mode & 0o777 == 0o600
    for d in (root / "a", root / "a" / "b", folder):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert K.untrusted_reason(path, is_file=True) is None


def _load_in_child(folder, tmpdir):
    """cpu_kernels() in a fresh process with GCVIDEO_KERNEL_DIR=folder: (loaded?, warning text)."""
    code = ("import warnings\n"
            "from gcvideo.layers.fused import kernels as K\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    lib = K.cpu_kernels()\n"
            "print('LIB', lib is not None)\n"
            "print('WARN', ' '.join(str(m.message) for m in w))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, GCVIDEO_KERNEL_DIR=str(folder), TMPDIR=str(tmpdir),
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GCVIDEO_CPU_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return "LIB True" in out.stdout, out.stdout.split("WARN", 1)[1]


def _copy_library(built, folder, mode=0o600):
    """The built library copied into ``folder`` (mode 0700) under its own name, with ``mode``."""
    import shutil
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    dst = folder / os.path.basename(built[2])
    shutil.copyfile(built[2], dst)
    dst.chmod(mode)
    return dst


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o777])
def test_a_library_others_can_write_is_refused(built, tmp_path, mode):
    lib = _copy_library(built, tmp_path / "cache", mode)
    assert "writable by other users" in K.untrusted_reason(str(lib), is_file=True)
    loaded, warning = _load_in_child(tmp_path / "cache", tmp_path)
    assert not loaded  # falls back to the torch-op path, saying why and which file
    assert "refusing to load the kernel library" in warning and str(lib) in warning and "writable by other" in warning
    assert lib.stat().st_mode & 0o777 == mode  # left for the user to inspect


def test_a_library_owned_by_another_user_is_refused(built, tmp_path):
    lib = _copy_library(built, tmp_path / "cache")
    os.chown(lib, 65534, 65534)
    assert "owned by uid 65534" in K.untrusted_reason(str(lib), is_file=True)
    loaded, warning = _load_in_child(tmp_path / "cache", tmp_path)
    assert not loaded and "owned by uid 65534" in warning and str(lib) in warning
    link = tmp_path / "cache2"
    link.mkdir(mode=0o700)
    (link / lib.name).symlink_to(built[2])  # a link to a good library is not loaded either
    assert "not a regular file" in K.untrusted_reason(str(link / lib.name), is_file=True)


@pytest.mark.parametrize("where", ["folder", "parent"])
@pytest.mark.parametrize("how", ["group-writable", "world-writable", "other owner"])
def test_a_folder_others_can_write_is_not_used(built, tmp_path, where, how):
    """A cache folder (or a folder above it) that others can write or own: the library in it is not
    loaded, and the private temporary folder gcvideo-<uid> is used instead (the library built there)."""
    parent = tmp_path / "shared"
    folder = parent / "cache"
    lib = _copy_library(built, folder)
    target = folder if where == "folder" else parent
    if how == "other owner":
        os.chown(target, 65534, 65534)
    else:
        target.chmod(0o770 if how == "group-writable" else 0o777)
    assert K.untrusted_reason(str(folder)) is not None
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    _copy_library(built, tmpdir / f"gcvideo-{os.getuid()}")  # (no second compile in the child)
    loaded, warning = _load_in_child(folder, tmpdir)
    assert loaded and warning.strip() == ""
    assert K.untrusted_reason(str(lib), is_file=True) is not None  # the planted path was passed over


def test_a_sticky_world_writable_parent_is_trusted(built, tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    lib = _copy_library(built, sticky / "cache")
    assert K.untrusted_reason(str(lib), is_file=True) is None
    sticky.chmod(0o777)  # the same folder without the sticky bit: others could rename our folder
    assert "writable by other users" in K.untrusted_reason(str(lib), is_file=True)
