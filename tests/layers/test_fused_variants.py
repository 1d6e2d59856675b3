"""The fused path runs exactly where it computes the reference, for every block variant.

Every (pooling, transform, norm, fusion) that ContextBlock builds is tried: the seam must take the
fused path for the combinations functions.py implements (listed here by hand, independently of
``fused.FUSED_VARIANTS``) and the reference ops for every other one, and wherever it runs, its values
and gradients must equal the reference's in float64. A block whose parts are not those the fused
Functions compute (an unknown pooling or fusion, another activation in the transform, a grouped conv)
must run its reference ops: the fused path never computes something else silently.
"""
import itertools

import pytest
import torch
import torch.nn as nn

from gcvideo.config import ConfigError, load_cfg
from gcvideo.layers import VARIANTS, ContextBlock, fused
from test_context_fused import C, _pair  # (fused, reference) float64 blocks with the same random weights

N, T, H, W = 2, 3, 4, 5

# What the fused Functions implement, from functions.py: ContextAdd takes add fusion with attention or
# average pooling and a bottleneck (with or without LayerNorm) or linear transform; mul fusion has the
# fused attention pooling only (average pooling + mul fusion, the SE block, has nothing to fuse).
EXPECTED_FUSED = {
    ("att", "bottleneck", "layernorm", "add"), ("att", "bottleneck", "none", "add"), ("att", "linear", "none", "add"),
    ("avg", "bottleneck", "layernorm", "add"), ("avg", "bottleneck", "none", "add"), ("avg", "linear", "none", "add"),
    ("att", "bottleneck", "layernorm", "mul"), ("att", "bottleneck", "none", "mul"), ("att", "linear", "none", "mul"),
}


def _run(block, x, s, gout):
    x = x.detach().clone().requires_grad_()
    s = s.detach().clone().requires_grad_() if s is not None else None
    out = block.residual(x, s) if s is not None else block(x)
    out.backward(gout)
    return [out.detach(), x.grad] + ([s.grad] if s is not None else []) + [p.grad for p in block.parameters()]


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64), torch.randn(x.shape, generator=g, dtype=torch.float64)


def test_the_reference_builds_every_combination_but_a_normalised_linear_transform():
    built = set()
    for v in itertools.product(("att", "avg"), ("bottleneck", "linear"), ("layernorm", "none"), ("add", "mul")):
        try:
            ContextBlock(C, 0.25, *v)
            built.add(v)
        except ValueError as e:
            assert v[1] == "linear" and v[2] == "layernorm" and "norm" in str(e)
    assert built == set(VARIANTS) and len(VARIANTS) == 12


def test_a_normalised_linear_transform_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="CONTEXT.NORM"):
        load_cfg(None, ["CONTEXT.TYPE", "snl", "CONTEXT.NORM", "layernorm"])
    load_cfg(None, ["CONTEXT.TYPE", "snl", "CONTEXT.TRANSFORM", "bottleneck", "CONTEXT.NORM", "layernorm"])


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(v) for v in VARIANTS])
@pytest.mark.parametrize("residual", [False, True], ids=["block", "residual"])
def test_fused_exactly_where_implemented_and_equal_to_the_reference(variant, residual, monkeypatch):
    fast, ref = _pair(*variant)
    x, s, gout = _inputs()
    s = s if residual else None
    assert fused.applies(fast, x, s) == (variant in EXPECTED_FUSED)
    assert not fused.applies(ref, x, s)  # fused=False
    calls = []
    real = fused.context_block
    monkeypatch.setattr(fused, "context_block", lambda *a: calls.append(real(*a)) or calls[-1])
    a, b = _run(fast, x, s, gout), _run(ref, x, s, gout)
    assert any(c is not None for c in calls) == (variant in EXPECTED_FUSED)  # the seam computed it, or not
    for got, want in zip(a, b):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("change", ["pooling", "fusion", "transform_kind", "norm_kind"])
def test_an_unknown_part_runs_the_reference_ops(change):
    """A variant added to ContextBlock later (its name unknown to the fused path) is not computed as
    one the fused path knows (today's code ran any pooling but 'att' as average pooling and any fusion
    but 'add' as mul)."""
    fast, _ = _pair("att", "bottleneck", "layernorm", "add")
    setattr(fast, change, "new_kind")
    x, s, _ = _inputs()
    assert not fused.applies(fast, x) and not fused.applies(fast, x, s)
    assert fused.context_block(fast, x) is None and fused.context_block(fast, x, s) is None


@pytest.mark.parametrize("fusion", ["add", "mul"])
def test_another_activation_in_the_transform_runs_the_reference_ops(fusion):
    """GELU instead of ReLU inside the bottleneck: the C kernels hard-code the ReLU (today's code
    computed ReLU silently for an add block), so the seam must leave this block to its own layers."""
    fast, ref = _pair("att", "bottleneck", "layernorm", fusion)
    for b in (fast, ref):
        b.transform[2] = nn.GELU()
    x, s, gout = _inputs()
    assert not fused.applies(fast, x, s)
    for got, want in zip(_run(fast, x, s, gout), _run(ref, x, s, gout)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("i", [0, 3], ids=["W_v1", "W_v2"])
def test_grouped_transform_convs_run_the_reference_ops(i):
    fast, ref = _pair("att", "bottleneck", "none", "add")
    for b in (fast, ref):
        torch.manual_seed(3)
        old = b.transform[i]
        b.transform[i] = nn.Conv3d(old.in_channels, old.out_channels, 1, groups=2).double()
    x, s, gout = _inputs()
    assert not fused.applies(fast, x, s)
    for got, want in zip(_run(fast, x, s, gout), _run(ref, x, s, gout)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_attention_conv_without_bias_is_still_fused():
    fast = ContextBlock(C, 0.25, att_bias=False).double()
    x, s, _ = _inputs()
    assert fused.applies(fast, x, s)
