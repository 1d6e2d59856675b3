"""Every aten op of a training step has a CUDA kernel (no GPU here, so the GPU paths are checked by dispatch).

The step runs on the CPU under a dispatch mode that records each aten op; each must have a CUDA
kernel or a composite one that works on every backend. CPU-only fast paths are chosen by a
device check, which the test turns to "not CPU" so that the ops CUDA would run are the ones
recorded. This caught ``aten::_add_relu_`` (CPU kernels only) in the fused GC block, which
crashed fp32 training of GC models on GPUs.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gcvideo.layers.fused.functions as context_mod
import gcvideo.layers.fused.kernels as kernels_mod
from gcvideo.config import get_cfg
from gcvideo.engine.memory_format import model_channels_last
from gcvideo.models import build_model

_ANY_BACKEND = ("CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd",
                "CompositeExplicitAutogradNonFunctional")


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.name())
        return func(*args, **(kwargs or {}))


# every member of the family, and the ablations, in a small network: (CONTEXT.TYPE, LOCATION, other keys)
CASES = [
    ("gc", [[0], [0], [0], [0]], {}),
    ("snl", [[], [0], [0], []], {}),
    ("se", [[], [0], [], [0]], {}),
    ("gc", [[], [0], [0], []], {"POOLING": "avg", "FUSION": "mul"}),
    ("nl", [[], [0], [0], []], {"NL_INSTANTIATION": "embedded_gaussian"}),
    ("nl", [[], [0], [], []], {"NL_INSTANTIATION": "concat"}),
]


def _small_model(kind, location, extra, dropout=0.0):
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS, cfg.MODEL.NUM_CLASSES, cfg.MODEL.DROPOUT = 8, [1, 1, 1, 1], 5, dropout
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION, cfg.CONTEXT.ZERO_INIT = kind, location, False
    for k, v in extra.items():
        setattr(cfg.CONTEXT, k, v)
    torch.manual_seed(0)
    return build_model(cfg).train()


def _has_cuda_kernel(name: str) -> bool:
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(name, k) for k in _ANY_BACKEND)


def test_the_check_sees_a_cpu_only_op():
    assert not _has_cuda_kernel("aten::_add_relu_.Tensor") and _has_cuda_kernel("aten::addmv")
    assert context_mod._has_add_relu_kernel(torch.zeros(1))  # the CPU fast path the GPU test turns off
    assert not context_mod._has_add_relu_kernel(torch.zeros(1, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind, location, extra", CASES)
def test_training_step_ops_have_cuda_kernels(kind, location, extra, channels_last, dtype, monkeypatch):
    monkeypatch.setattr(context_mod, "_has_add_relu_kernel", lambda t: False)  # as on a GPU:
    monkeypatch.setattr(kernels_mod, "cpu_kernels", lambda: None)  # no CPU-only fused kernels either
    model = _small_model(kind, location, extra, dropout=0.5)  # dropout's ops recorded too
    x = torch.randn(2, 3, 4, 32, 32)
    if channels_last:
        model = model_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    rec = _Recorder()
    with rec, torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), torch.tensor([1, 3]))
    with rec:
        loss.backward()
    assert "aten::convolution" in rec.ops or "aten::mkldnn_convolution" in rec.ops  # it did record the step
    missing = sorted(op for op in rec.ops if not _has_cuda_kernel(op))
    assert not missing, f"aten ops without a CUDA kernel in a {kind} training step: {missing}"


# --- on a GPU (skipped without one): the same training steps run there, and agree with the CPU ---
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _step(model, x, target, device, dtype, channels_last):
    model = model.to(device)
    x = x.to(device)
    if channels_last:
        model = model_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(device.type if isinstance(device, torch.device) else device, dtype=dtype or torch.float32,
                        enabled=dtype is not None):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), target.to(device))
    loss.backward()
    return out.detach().cpu().double(), {n: p.grad.detach().cpu().double() for n, p in model.named_parameters()}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind, location, extra", CASES)
def test_training_step_on_cuda_matches_cpu(kind, location, extra, channels_last, dtype):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        x, target = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 3])
        want_out, want_grads = _step(_small_model(kind, location, extra).double(), x.double(), target, "cpu", None,
                                     False)
        out, grads = _step(_small_model(kind, location, extra), x, target, torch.device("cuda"), dtype,
                           channels_last)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    if dtype is None:  # fp32 without TF32: rounding only
        torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-4)
        top = max(g.abs().max().item() for g in want_grads.values())
        for n in want_grads:  # (a conv bias before a train-mode BN has an exactly zero gradient: noise only)
            scale = want_grads[n].abs().max().item()
            torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-3, atol=1e-3 * scale + 1e-5 * top, msg=n)
    else:  # half types: finite, and the logits within a few percent of float64
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert (out - want_out).abs().max() <= 0.05 * (1 + want_out.abs().max()), (out, want_out)


@pytest.mark.cuda
@pytest.mark.slow
@needs_cuda
def test_full_size_gc_all_on_cuda_matches_cpu():
    from gcvideo.config import load_cfg
    import os
    cfg = load_cfg(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "kinetics400",
                                "slow_r50_8x8_gc_all.yaml"), [], check_files=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.context_blocks():  # non-zero transforms so the blocks matter
            for p in m.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0, 0.01)
    x = torch.randn(2, 3, 8, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        torch.backends.cudnn.allow_tf32 = False
        try:
            got = model_channels_last(model.cuda())(x.cuda().contiguous(memory_format=torch.channels_last_3d))
        finally:
            torch.backends.cudnn.allow_tf32 = True
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
