"""build_model reads the config once into a ResNetSpec and a ContextPlacement (its ContextSpec);
SlowResNet builds from those objects, the context blocks exactly where the placement says."""
import pytest
import torch

from gcvideo.config import get_cfg
from gcvideo.layers import ContextSpec, NonLocalSpec
from gcvideo.models import ContextPlacement, ResNetSpec, SlowResNet, build_model
from gcvideo.models.build import context_placement, context_spec, resnet_spec
from gcvideo.models.resnet import context_block_label

TINY = ResNetSpec(stage_depths=(1, 2, 2, 1), num_classes=5, width=8)


def _labels(model):
    return [context_block_label(n) for n, _ in model.named_context_blocks()]


def test_config_read_once_into_the_specs():
    cfg = get_cfg()
    c, m = cfg.CONTEXT, cfg.MODEL
    c.TYPE, c.RATIO, c.POOLING, c.ATT_BIAS, c.FUSED = "gc", 0.125, "avg", False, False
    c.NL_INSTANTIATION, c.NL_INNER_RATIO, c.NL_POOL, c.NL_POOL_POSITION, c.NL_SCALE = "dot_product", 0.25, [], "before_conv", True
    m.BN_EPS, m.BN_MOMENTUM, m.NUM_CLASSES, m.DROPOUT = 1e-3, 0.05, 7, 0.25
    assert context_spec(cfg) == ContextSpec("gc", ratio=0.125, pooling="avg", att_bias=False, fused=False,
                                            nl=NonLocalSpec("dot_product", 0.25, None, "before_conv", True, 1e-3, 0.05))
    spec = resnet_spec(cfg)
    assert (spec.num_classes, spec.dropout, spec.bn_eps, spec.bn_momentum) == (7, 0.25, 1e-3, 0.05)
    assert spec.stage_depths == (3, 4, 6, 3) and spec.head_pool_kernel is None
    c.LOCATION = [[], [1], [0, 2], []]
    place = context_placement(cfg)
    assert place.position == "pre_add" and place.where == (frozenset(), {1}, {0, 2}, frozenset())
    c.TYPE = "none"
    c.LOCATION = [[], [], [], []]
    assert context_placement(cfg) is None


def test_blocks_sit_where_the_placement_says():
    where = ((0,), (), (1,), (0,))
    pre = SlowResNet(TINY, ContextPlacement(ContextSpec("gc"), where, "pre_add"))
    assert _labels(pre) == ["res2.0", "res4.1", "res5.0"]
    post = SlowResNet(TINY, ContextPlacement(ContextSpec("nl"), where, "post_relu"))
    assert _labels(post) == ["res2.0+", "res4.1+", "res5.0+"]
    assert [b.channels for b in pre.context_blocks()] == [32, 128, 256]  # width 8: 4x..32x per stage
    assert _labels(SlowResNet(TINY)) == []


def test_build_model_is_the_specs_model():
    cfg = get_cfg()
    cfg.MODEL.NUM_CLASSES = 5
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION = "snl", [[], [1], [1, 3], []]
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.manual_seed(0)
    spec = ContextSpec("snl")
    direct = SlowResNet(ResNetSpec(num_classes=5), ContextPlacement(spec, ((), (1,), (1, 3), ()), "pre_add"))
    a, b = model.state_dict(), direct.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert model.spec == direct.spec and model.placement.spec == spec


@pytest.mark.parametrize("make,message", [
    (lambda: ResNetSpec(temporal_kernels=(1, 3)), "ResNetSpec.temporal_kernels"),
    (lambda: ContextPlacement(ContextSpec("gc"), ((0,),), "middle"), "ContextPlacement.position='middle'"),
    (lambda: ContextPlacement("gc", ((0,),)), "ContextPlacement.spec='gc'"),
])
def test_a_bad_value_is_refused_at_the_spec(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loose_values_are_refused():
    with pytest.raises(TypeError, match="expected a ResNetSpec"):
        SlowResNet((3, 4, 6, 3))
