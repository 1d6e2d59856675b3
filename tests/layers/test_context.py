"""The global-context family against the paper's equations, computed in float64 with numpy.

All weights are random (including the zero-initialised last conv), so every term matters.
"""
import itertools

import numpy as np
import pytest
import torch

from gcvideo.layers import ContextBlock, ContextSpec, create_context_block

N, C, T, H, W = 2, 16, 3, 5, 4


def _randomise(block: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def _np(t):
    return t.detach().double().numpy()


def reference(block: ContextBlock, x: np.ndarray) -> np.ndarray:
    """z = F(x, delta(sum_j alpha_j x_j)) in float64 from the block's weights (paper Eqs. 3-5)."""
    n, c = x.shape[:2]
    xf = x.reshape(n, c, -1)  # (N, C, L)
    if block.pooling == "att":
        wk = _np(block.conv_mask.weight).reshape(c)
        bk = _np(block.conv_mask.bias)[0] if block.conv_mask.bias is not None else 0.0
        logits = np.einsum("c,ncl->nl", wk, xf) + bk
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        alpha = e / e.sum(axis=1, keepdims=True)  # softmax over all T*H*W positions
        ctx = np.einsum("nl,ncl->nc", alpha, xf)
    else:
        ctx = xf.mean(axis=2)
    seq = block.transform
    if block.transform_kind == "bottleneck":
        w1, b1 = _np(seq[0].weight).reshape(-1, c), _np(seq[0].bias)
        h = ctx @ w1.T + b1  # (N, Cr)
        if block.norm_kind == "layernorm":
            ln = seq[1]
            mu = h.mean(axis=1, keepdims=True)
            var = h.var(axis=1, keepdims=True)
            h = (h - mu) / np.sqrt(var + ln.eps) * _np(ln.weight).reshape(-1) + _np(ln.bias).reshape(-1)
        h = np.maximum(h, 0)
        w2, b2 = _np(seq[3].weight).reshape(c, -1), _np(seq[3].bias)
        term = h @ w2.T + b2  # (N, C)
    else:
        wv, bv = _np(seq[0].weight).reshape(c, c), _np(seq[0].bias)
        term = ctx @ wv.T + bv
    term = term[:, :, None, None, None]
    if block.fusion == "add":
        return x + term
    return x * (1.0 / (1.0 + np.exp(-term)))


# every pooling x transform x norm x fusion combination (the linear SNL transform has no norm)
ALL_VARIANTS = [v for v in itertools.product(["att", "avg"], ["bottleneck", "linear"], ["layernorm", "none"],
                                             ["add", "mul"]) if not (v[1] == "linear" and v[2] == "layernorm")]


@pytest.mark.parametrize("pooling,transform,norm,fusion", ALL_VARIANTS)
@pytest.mark.parametrize("fused", [True, False])
def test_family_matches_equations_float64(pooling, transform, norm, fusion, fused):
    block = ContextBlock(C, ratio=0.25, pooling=pooling, transform=transform, norm=norm, fusion=fusion,
                         fused=fused).double()
    _randomise(block, seed=hash((pooling, transform, norm, fusion)) % 1000)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    out = block(x)
    np.testing.assert_allclose(out.detach().numpy(), reference(block, x.numpy()), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,parts", [
    ("gc", ("att", "bottleneck", "layernorm", "add")),
    ("snl", ("att", "linear", "none", "add")),
    ("se", ("avg", "bottleneck", "none", "mul")),
])
def test_presets_chosen_by_string(kind, parts):
    block = create_context_block(ContextSpec(kind, ratio=0.25), C)
    assert (block.pooling, block.transform_kind, block.norm_kind, block.fusion) == parts
    _randomise(block.double(), 3)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    np.testing.assert_allclose(block(x).detach().numpy(), reference(block, x.numpy()), rtol=1e-10)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_gc_float32_and_channels_last_match_reference(memory_format):
    block = create_context_block(ContextSpec("gc", ratio=0.25), C)
    _randomise(block, 7)
    x = torch.randn(N, C, T, H, W).contiguous(memory_format=memory_format)
    np.testing.assert_allclose(block(x).detach().double().numpy(), reference(block, x.double().numpy()),
                               rtol=1e-4, atol=1e-5)


def test_gc_parameter_count_ratio():
    # conv_mask C+1, conv C->C/4 (+bias), LN 2*C/4, conv C/4->C (+bias)
    c = 512
    block = create_context_block(ContextSpec("gc", ratio=0.25), c)
    expected = (c + 1) + (c * c // 4 + c // 4) + 2 * (c // 4) + (c // 4 * c + c)
    assert sum(p.numel() for p in block.parameters()) == expected
    block16 = create_context_block(ContextSpec("gc", ratio=1 / 16), c)
    assert block16.transform[0].out_channels == 32


@pytest.mark.parametrize("kind", ["gc", "snl"])
def test_zero_init_is_identity(kind):
    block = create_context_block(ContextSpec(kind), C)
    x = torch.randn(N, C, T, H, W)
    assert torch.equal(block(x), x)
    assert torch.count_nonzero(block.transform[-1].weight) == 0


def test_attention_sums_to_one_over_all_positions():
    block = create_context_block(ContextSpec("gc"), C)
    _randomise(block, 1)
    x = torch.randn(N, C, T, H, W)
    a = block.attention(x)
    assert a.shape == (N, T, H, W)
    torch.testing.assert_close(a.sum(dim=(1, 2, 3)), torch.ones(N))
    # the attention is over T*H*W jointly: changing one frame changes weights in the others
    x2 = x.clone()
    x2[:, :, 0] += 3.0
    assert not torch.allclose(block.attention(x2)[:, 1:], a[:, 1:])


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="pooling='max'"):
        ContextBlock(C, pooling="max")
    with pytest.raises(ValueError, match="ratio=0.3"):
        ContextBlock(C, ratio=0.3)
    with pytest.raises(ValueError, match="'xx'"):
        create_context_block(ContextSpec("xx"), C)


@pytest.mark.parametrize("old_shape", [(1, 1, 1), (1, 1), ()])
def test_layernorm_weights_of_every_layout_load(old_shape):
    """The GC LayerNorm holds (Cr,) weights; state dicts with (Cr, 1, 1, 1) (earlier gcvideo) and
    (Cr, 1, 1) (GCNet's 2-D LayerNorm([Cr, 1, 1])) load into it, and the block then matches Eq. 5."""
    src = create_context_block(ContextSpec("gc", ratio=0.25), C).double()
    _randomise(src, 5)
    cr = C // 4
    sd = {k: (v.reshape(cr, *old_shape) if ".1." in k else v) for k, v in src.state_dict().items()}
    assert sd["channel_add_conv.1.weight"].shape == (cr, *old_shape)
    block = create_context_block(ContextSpec("gc", ratio=0.25), C).double()
    block.load_state_dict(sd)
    assert block.transform[1].weight.shape == (cr,) and torch.equal(block.transform[1].weight.view(-1),
                                                                   src.transform[1].weight.view(-1))
    assert sd["channel_add_conv.1.weight"].shape == (cr, *old_shape)  # the caller's dict is left as it is
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    np.testing.assert_allclose(block(x).detach().numpy(), reference(src, x.numpy()), rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="channel_add_conv.1.weight"):  # a wrong size still fails
        block.load_state_dict({**sd, "channel_add_conv.1.weight": torch.ones(cr + 1, *old_shape)})


def test_allowed_values_are_the_layer_constants():
    from gcvideo.layers import FUSIONS, NORMS, POOLINGS, TRANSFORMS
    assert (POOLINGS, TRANSFORMS, NORMS, FUSIONS) == (("att", "avg"), ("bottleneck", "linear"),
                                                    ("layernorm", "none"), ("add", "mul"))
    for name, allowed in (("pooling", POOLINGS), ("transform", TRANSFORMS), ("norm", NORMS), ("fusion", FUSIONS)):
        with pytest.raises(ValueError, match=f"{name}='nope'"):
            ContextBlock(C, **{name: "nope"})
