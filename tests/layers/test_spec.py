"""ContextSpec / NonLocalSpec: a block is described by one checked object, and
create_context_block(spec, channels) builds exactly the block the classes build from the same values."""
import pytest
import torch

from gcvideo.layers import (CONTEXT_PRESETS, VARIANTS, ContextBlock, ContextSpec, NonLocalBlock, NonLocalSpec,
                            create_context_block)

C, N, T, H, W = 16, 2, 3, 4, 5


def _same_block(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b) and repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    torch.manual_seed(3)
    x = torch.randn(N, C, T, H, W)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_from_a_spec_is_the_class_built_directly(variant):
    pooling, transform, norm, fusion = variant
    spec = ContextSpec("gc", ratio=0.5, pooling=pooling, transform=transform, norm=norm, fusion=fusion,
                       att_bias=False, zero_init=False, fused=False)
    assert spec.parts() == variant
    torch.manual_seed(0)
    built = create_context_block(spec, C)
    torch.manual_seed(0)
    direct = ContextBlock(C, ratio=0.5, pooling=pooling, transform=transform, norm=norm, fusion=fusion,
                          att_bias=False, zero_init=False, fused=False)
    _same_block(built, direct)
    assert built.fused is False
    if pooling == "att":
        assert built.conv_mask.bias is None


@pytest.mark.parametrize("kind", sorted(CONTEXT_PRESETS))
def test_auto_parts_are_the_preset(kind):
    p = CONTEXT_PRESETS[kind]
    assert ContextSpec(kind).parts() == (p["pooling"], p["transform"], p["norm"], p["fusion"])
    assert ContextSpec(kind, pooling="att").parts()[0] == "att"  # one part overridden, the others the preset's


def test_nonlocal_from_a_spec_is_the_class_built_directly():
    nl = NonLocalSpec(instantiation="concat", inner_ratio=0.25, pool=[1, 1, 2], pool_position="before_conv",
                      scale=True, bn_eps=1e-3, bn_momentum=0.2)
    assert nl.pool == (1, 1, 2)  # a list is kept as a tuple
    torch.manual_seed(0)
    built = create_context_block(ContextSpec("nl", zero_init=False, nl=nl), C)
    torch.manual_seed(0)
    direct = NonLocalBlock(C, inner_channels=4, instantiation="concat", pool=(1, 1, 2), pool_position="before_conv",
                           scale=True, zero_init=False, bn_eps=1e-3, bn_momentum=0.2)
    _same_block(built, direct)
    assert (built.bn.eps, built.bn.momentum) == (1e-3, 0.2)
    assert create_context_block(ContextSpec("nl", nl=NonLocalSpec(pool=())), C).pool is None


@pytest.mark.parametrize("kind", [None, "none"])
def test_kind_none_builds_nothing(kind):
    assert ContextSpec(kind).kind == "none"
    assert create_context_block(ContextSpec(kind), C) is None


@pytest.mark.parametrize("make,message", [
    (lambda: ContextSpec("xx"), "ContextSpec.kind='xx'"),
    (lambda: ContextSpec("gc", pooling="max"), "ContextSpec.pooling='max'"),
    (lambda: ContextSpec("se", fusion="concat"), "ContextSpec.fusion='concat'"),
    (lambda: ContextSpec("gc", ratio=0.0), "ContextSpec.ratio=0.0"),
    (lambda: ContextSpec("gc", ratio=1.5), "ContextSpec.ratio=1.5"),
    # the norm sits inside the bottleneck: snl's linear transform has none, set or by an override
    (lambda: ContextSpec("snl", norm="layernorm"), "ContextSpec.norm='layernorm'.*transform 'linear'"),
    (lambda: ContextSpec("gc", transform="linear"), "ContextSpec.norm='auto'.*transform 'linear'"),
    (lambda: NonLocalSpec(instantiation="softmax"), "NonLocalSpec.instantiation='softmax'"),
    (lambda: NonLocalSpec(inner_ratio=2.0), "NonLocalSpec.inner_ratio=2.0"),
    (lambda: NonLocalSpec(pool=(1, 2)), r"NonLocalSpec.pool=\(1, 2\)"),
    (lambda: NonLocalSpec(pool=(1, 0, 2)), r"NonLocalSpec.pool=\(1, 0, 2\)"),
    (lambda: NonLocalSpec(pool_position="middle"), "NonLocalSpec.pool_position='middle'"),
    (lambda: ContextSpec("nl", nl={"pool": (1, 2, 2)}), "ContextSpec.nl="),
])
def test_a_bad_value_is_refused_at_the_spec_naming_its_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_spec_is_frozen_and_replace_checks_again():
    spec = ContextSpec("gc")
    with pytest.raises(AttributeError):
        spec.ratio = 0.5
    assert spec.replace(ratio=0.5).ratio == 0.5 and spec.ratio == 0.25
    with pytest.raises(ValueError, match="ContextSpec.pooling='max'"):
        spec.replace(pooling="max")


def test_loose_values_are_refused_with_the_new_call():
    with pytest.raises(TypeError, match="expected a ContextSpec"):
        create_context_block("gc", C)


def test_a_preset_added_in_context_py_is_built_and_the_fused_path_decides_alone(monkeypatch):
    """Adding a named block is one line in context.py's CONTEXT_PRESETS: the spec accepts it, the
    block has its parts, and the fused path runs for it only where FUSED_VARIANTS has its parts."""
    from gcvideo.layers import fused
    from gcvideo.layers.context import CONTEXT_PRESETS as presets

    x = torch.randn(N, C, T, H, W)
    for name, parts in {"gc_mul": ("att", "bottleneck", "layernorm", "mul"),
                        "avg_lin_mul": ("avg", "linear", "none", "mul")}.items():
        monkeypatch.setitem(presets, name, dict(zip(("pooling", "transform", "norm", "fusion"), parts)))
        block = create_context_block(ContextSpec(name), C)
        assert (block.pooling, block.transform_kind, block.norm_kind, block.fusion) == parts
        assert fused.applies(block, x) == (parts in fused.FUSED_VARIANTS) == (name == "gc_mul")
