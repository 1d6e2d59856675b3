"""The fused context-block Functions against the plain autograd reference path (fused=False).

Forward values and every gradient (input, shortcut, attention conv, transform weights) must
agree; float64 gradcheck on the Functions themselves; both memory formats; bf16 autocast.
"""
import itertools

import pytest
import torch

from gcvideo.config import get_cfg
from gcvideo.layers import ContextBlock, attention_pool, fused as fused_path
from gcvideo.layers.fused.functions import ContextAdd, _add_rank2
from gcvideo.models import build_model

N, C, T, H, W = 2, 16, 3, 5, 4
ADD_VARIANTS = [v for v in itertools.product(["att", "avg"], ["bottleneck", "linear"], ["layernorm", "none"])
                if not (v[1] == "linear" and v[2] == "layernorm")]


def _pair(pooling="att", transform="bottleneck", norm="layernorm", fusion="add", dtype=torch.float64, seed=0,
          att_bias=True):
    """(fused, reference) blocks with the same random weights (the zero-initialised conv too)."""
    blocks = []
    for fused in (True, False):
        b = ContextBlock(C, ratio=0.25, pooling=pooling, transform=transform, norm=norm, fusion=fusion,
                         att_bias=att_bias, fused=fused).to(dtype)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in b.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        blocks.append(b)
    return blocks


def _grads(block, x, shortcut, residual, gout):
    x = x.detach().clone().requires_grad_()
    s = shortcut.detach().clone().requires_grad_() if shortcut is not None else None
    out = block.residual(x, s) if residual else block(x)
    out.backward(gout)
    named = {n: p.grad.clone() for n, p in block.named_parameters()}
    return out.detach(), x.grad, (s.grad if s is not None else None), named


@pytest.mark.parametrize("pooling,transform,norm", ADD_VARIANTS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_fused_matches_reference_values_and_gradients_float64(pooling, transform, norm, residual, memory_format):
    fused, ref = _pair(pooling, transform, norm)
    torch.manual_seed(1)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64).contiguous(memory_format=memory_format)
    s = torch.randn_like(x) if residual else None
    gout = torch.randn(N, C, T, H, W, dtype=torch.float64)
    a = _grads(fused, x, s, residual, gout)
    b = _grads(ref, x, s, residual, gout)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-12)
    if residual:
        torch.testing.assert_close(a[2], b[2], rtol=1e-12, atol=1e-12)
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        torch.testing.assert_close(a[3][k], b[3][k], rtol=1e-9, atol=1e-11, msg=k)
    if memory_format == torch.channels_last_3d:  # the gradient keeps the input's layout
        assert a[1].is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_gradcheck_float64_inputs(residual, pooling):
    block, _ = _pair(pooling=pooling)
    x = torch.randn(2, C, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn_like(x, requires_grad=True)
    if residual:
        assert torch.autograd.gradcheck(block.residual, (x, s), eps=1e-6, atol=1e-7)
    else:
        assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("transform,norm", [("bottleneck", "layernorm"), ("linear", "none")])
def test_gradcheck_float64_parameters(transform, norm):
    block, _ = _pair(transform=transform, norm=norm)
    x = torch.randn(2, C, 2, 3, 3, dtype=torch.float64)
    s = torch.randn_like(x)
    # the block's own parameters are the inputs: gradcheck perturbs them in place, the Function
    # reads the transform through the block
    params = [block.conv_mask.weight, block.conv_mask.bias] + list(block.transform.parameters())

    def f(w, b, *ps):
        return ContextAdd.apply(x, s, w, b, block, True, *ps)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-7)


def test_relu_boundary_and_shortcut_gradient_is_the_masked_gradient():
    fused, ref = _pair()
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    s = -torch.abs(torch.randn_like(x)) * 3  # many outputs clipped by the ReLU
    gout = torch.randn_like(x)
    a, b = _grads(fused, x, s, True, gout), _grads(ref, x, s, True, gout)
    assert (a[0] == 0).float().mean() > 0.3
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_float32_and_shortcut_without_grad(memory_format):
    fused, ref = _pair(dtype=torch.float32)
    x = torch.randn(N, C, T, H, W).contiguous(memory_format=memory_format)
    s = torch.randn_like(x)  # no grad needed (e.g. a frozen stem)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    oa, ob = fused.residual(xa, s), ref.residual(xb, s)
    gout = torch.randn_like(oa)
    oa.backward(gout)
    ob.backward(gout)
    torch.testing.assert_close(oa, ob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("input_seed", [0, 1, 2])
def test_bf16_autocast_close_to_the_reference_path(input_seed):
    fused, ref = _pair(dtype=torch.float32)
    # inputs at 0.1: with unit inputs the weights' logits saturate the softmax (one-hot attention,
    # every attention gradient exactly 0 in both paths), and the test compared zeros
    torch.manual_seed(input_seed)
    x = (0.1 * torch.randn(N, C, T, H, W)).contiguous(memory_format=torch.channels_last_3d).to(torch.bfloat16)
    s = torch.randn_like(x)
    res = []
    for block in (fused, ref):
        xa = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block.residual(xa, s)
        out.float().square().sum().backward()
        res.append((out, xa.grad, {n: p.grad for n, p in block.named_parameters()}))
    (oa, ga, pa), (ob, gb, pb) = res
    assert oa.dtype == ob.dtype == torch.bfloat16 and ga.dtype == torch.bfloat16

    def mostly_close(a, b, tol=0.05):  # bf16: allow the rare ReLU that flips between the two paths
        d = (a.float() - b.float()).abs() > tol * (1 + b.float().abs())
        assert d.float().mean() < 0.01, d.float().mean()

    mostly_close(oa, ob)
    mostly_close(ga, gb)
    for n in pa:
        p, q = pa[n], pb[n]
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        if n == "conv_mask.bias":  # exactly 0 in exact arithmetic (softmax is shift-invariant): rounding only
            assert p.abs().item() < 0.05 * pa["conv_mask.weight"].abs().max().item()
            continue
        torch.testing.assert_close(p, q, rtol=0.1, atol=0.1 * q.abs().max().item(), msg=n)


def test_frozen_transform_and_attention_conv():
    fused, ref = _pair()
    for b in (fused, ref):
        for p in b.parameters():
            p.requires_grad_(False)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    s = torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused.residual(xa, s).sum().backward()
    ref.residual(xb, s).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)


def test_mul_fusion_keeps_the_reference_path():
    fused, ref = _pair(pooling="avg", norm="none", fusion="mul")
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    torch.testing.assert_close(fused(x), ref(x))
    torch.testing.assert_close(fused.residual(x, x), ref.residual(x, x))


def test_tracing_uses_the_reference_ops():
    fused, _ = _pair(dtype=torch.float32)
    x = torch.randn(1, C, T, H, W)
    graph = str(torch.jit.trace(fused, x, check_trace=False).graph)
    assert "PythonOp" not in graph and "softmax" in graph


def test_attention_pool_function_gradients():
    x = torch.randn(N, C, T, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(1, C, 1, 1, 1, dtype=torch.float64)
    b = torch.randn(1, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda *a: fused_path.attention_pool(*a), inputs, eps=1e-6, atol=1e-7)
    ctx_f, p_f = fused_path.attention_pool(x, w, b)
    ctx_r, p_r = attention_pool(x, w, b)
    torch.testing.assert_close(ctx_f, ctx_r)
    torch.testing.assert_close(p_f, p_r)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_add_rank2(memory_format):
    g = torch.randn(N, C, T, H, W, dtype=torch.float64).contiguous(memory_format=memory_format)
    u1, u2 = torch.randn(N, C, dtype=torch.float64), torch.randn(N, C, dtype=torch.float64)
    v1, v2 = torch.randn(N, T * H * W, dtype=torch.float64), torch.randn(N, T * H * W, dtype=torch.float64)
    expected = g + (torch.einsum("nc,nl->ncl", u1, v1) + torch.einsum("nc,nl->ncl", u2, v2)).view(g.shape)
    out = _add_rank2(g, u1, v1, u2, v2)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(_add_rank2(None, u1, v1, u2, v2, like=g), expected - g)


@pytest.mark.parametrize("kind", ["gc", "snl"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_model_fused_equals_unfused_with_gradients(kind, channels_last):
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS, cfg.MODEL.NUM_CLASSES = 8, [1, 2, 1, 1], 5
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION, cfg.CONTEXT.ZERO_INIT = kind, [[], "all", "all", "all"], False
    cfg.MODEL.DROPOUT = 0.0
    models = []
    for fused in (True, False):
        cfg.CONTEXT.FUSED = fused
        torch.manual_seed(0)
        models.append(build_model(cfg).double())
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 4, 64, 64, dtype=torch.float64).contiguous(memory_format=fmt)
    outs = []
    for m in models:
        with torch.no_grad():  # 5-D conv kernels only (LayerNorm's [Cr, 1, 1, 1] weight is 4-D)
            for q in m.parameters():
                if q.dim() == 5:
                    q.data = q.data.contiguous(memory_format=fmt)
        m.train()
        out = m(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=n)


def test_residual_calls_the_module_when_hooked():
    fused, ref = _pair()
    seen = []
    h = fused.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    s = torch.randn_like(x)
    out = fused.residual(x, s)
    h.remove()
    assert seen == [x.shape]
    torch.testing.assert_close(out, ref.residual(x, s))
    fused.residual(x, s)
    assert len(seen) == 1  # unhooked: the fused Function again, no module call
