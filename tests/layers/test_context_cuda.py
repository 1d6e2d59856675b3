"""The context blocks and the non-local block on a GPU, against the float64 CPU references.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests -m cuda`` or the
whole suite. float64 on the GPU must match the CPU reference path to rounding (values and every
gradient), float32 with TF32 off to 1e-4, and bf16/fp16 autocast within half-precision rounding.
"""
import numpy as np
import pytest
import torch

from gcvideo.layers import NL_INSTANTIATIONS, NonLocalBlock

from test_context_fused import ADD_VARIANTS, C, H, N, T, W, _grads, _pair
from test_nonlocal import random_block, reference as nl_reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _cpu_reference(pooling, transform, norm, fusion, x, s, residual, gout):
    """Values and gradients of the plain autograd path (fused=False) in float64 on the CPU."""
    _, ref = _pair(pooling, transform, norm, fusion)
    return _grads(ref, x.double().cpu(), None if s is None else s.double().cpu(), residual, gout.double().cpu())


@pytest.mark.parametrize("pooling,transform,norm", ADD_VARIANTS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_add_blocks_on_cuda_match_cpu_float64(pooling, transform, norm, residual, memory_format, dtype):
    fused, _ = _pair(pooling, transform, norm)
    fused = fused.to("cuda", dtype)
    torch.manual_seed(1)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    s = torch.randn_like(x) if residual else None
    gout = torch.randn_like(x)
    want = _cpu_reference(pooling, transform, norm, "add", x, s, residual, gout)
    on = lambda t: None if t is None else t.to("cuda", dtype).contiguous(memory_format=memory_format)  # noqa: E731
    got = _grads(fused, on(x), on(s), residual, on(gout))
    assert got[0].device.type == "cuda" and got[0].dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0].cpu().double(), want[0], **tol)
    torch.testing.assert_close(got[1].cpu().double(), want[1], **tol)
    if residual:
        torch.testing.assert_close(got[2].cpu().double(), want[2], **tol)
    for n in want[3]:
        ptol = tol if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3 * (1 + want[3][n].abs().max().item()))
        torch.testing.assert_close(got[3][n].cpu().double(), want[3][n], **ptol, msg=n)


@pytest.mark.parametrize("fusion", ["add", "mul"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cuda_as_accurate_as_plain_autograd(fusion, dtype):
    """Under autocast the fused block is no further from float64 than autograd's own path in the
    same precision (both round x, the pooling products and the softmax gradient to half types)."""
    blocks = _pair("att", "bottleneck", "layernorm", fusion)  # (fused, plain autograd), same weights
    torch.manual_seed(2)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    s = torch.randn_like(x)
    gout = torch.randn_like(x)
    want = _grads(blocks[1], x, s, True, gout)  # float64 on the CPU
    errors = []
    for block in blocks:
        block = block.float().cuda()
        xa = x.to("cuda", dtype).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            out = block.residual(xa, s.to("cuda", dtype))
        out.backward(gout.to("cuda", out.dtype))
        assert out.dtype == dtype and xa.grad.dtype == dtype
        got = {"out": out, "x": xa.grad, **{n: p.grad for n, p in block.named_parameters()}}
        for n, v in got.items():
            assert torch.isfinite(v).all(), n
        ref = {"out": want[0], "x": want[1], **want[3]}
        errors.append({n: (got[n].cpu().double() - ref[n]).abs().max().item() for n in got})
    eps = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10  # unit roundoff of the half type
    scale = {"out": want[0].abs().max().item(), "x": want[1].abs().max().item(),
             **{n: g.abs().max().item() for n, g in want[3].items()}}
    for n, e in errors[0].items():
        assert e <= 2 * errors[1][n] + 4 * eps * scale[n], (n, e, errors[1][n], scale[n])


@pytest.mark.parametrize("instantiation", NL_INSTANTIATIONS)
@pytest.mark.parametrize("pool,pool_position", [(None, "after_conv"), ((1, 2, 2), "after_conv"),
                                                ((1, 2, 2), "before_conv")])
def test_nonlocal_on_cuda_matches_eq1_and_cpu_gradients(instantiation, pool, pool_position):
    nc, nn_, nt, nh, nw = 8, 2, 2, 4, 6
    block = random_block(nc, instantiation, pool, pool_position)
    x = torch.randn(nn_, nc, nt, nh, nw, dtype=torch.float64)
    gpu = NonLocalBlock(nc, instantiation=instantiation, pool=pool, pool_position=pool_position).double()
    gpu.load_state_dict(block.state_dict())
    gpu = gpu.cuda().eval()
    xg = x.to("cuda", copy=True).requires_grad_()
    out = gpu(xg)
    np.testing.assert_allclose(out.detach().cpu().numpy(), nl_reference(block, x.numpy()), rtol=1e-9, atol=1e-10)
    # gradients: the same graph on the CPU
    xc = x.clone().requires_grad_()
    outc = block(xc)
    gout = torch.randn_like(x)
    outc.backward(gout)
    out.backward(gout.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-9, atol=1e-10)
    for (n, p), (_, q) in zip(gpu.named_parameters(), block.named_parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-9, atol=1e-10, msg=n)
