"""Slow-only ResNet-3D: paper parameter counts, pytorchvideo parity, context placement."""
import os

import pytest
import torch

from gcvideo.config import get_cfg, load_cfg
from gcvideo.models import ContextBlock, NonLocalBlock, build_model, load_pretrained

CONFIGS = "configs/kinetics400/"

# (config, exact parameter count, the paper's Table 10 figure in millions)
TABLE10 = [
    ("slow_r50_8x8.yaml", 32_454_096, 32.45),
    ("slow_r50_8x8_nl5.yaml", 39_812_560, 39.81),
    ("slow_r50_8x8_snl5.yaml", 36_132_309, 36.13),
    ("slow_r50_8x8_gc5.yaml", 34_300_373, 34.30),
    ("slow_r50_8x8_gc_all.yaml", 42_455_005, 42.45),  # 42.455M: bias of the C->1 attention conv
]


@pytest.mark.parametrize("name,count,paper_m", TABLE10)
def test_table10_parameter_counts(name, count, paper_m):
    model = build_model(load_cfg(CONFIGS + name, check_files=False))
    n = sum(p.numel() for p in model.parameters())
    assert n == count
    assert abs(n / 1e6 - paper_m) < 0.0051  # matches to the printed precision


def test_gc_all_without_attention_bias_rounds_to_paper():
    cfg = load_cfg(CONFIGS + "slow_r50_8x8_gc_all.yaml", ["CONTEXT.ATT_BIAS", False], check_files=False)
    n = sum(p.numel() for p in build_model(cfg).parameters())
    assert n == 42_455_005 - 13 and round(n / 1e6, 2) == 42.45


def test_r101_structure():
    model = build_model(load_cfg(CONFIGS + "slow_r101_8x8.yaml", check_files=False))
    assert [len(model.blocks[i].res_blocks) for i in range(1, 5)] == [3, 4, 23, 3]
    # torchvision ResNet-101 has 44,549,160 params; 3D adds the temporal taps of res4/res5 conv_a
    # and replaces the 1000-way fc by a 400-way head.
    import torchvision
    r101 = torchvision.models.resnet101()
    extra = 0
    for s in (3, 4):
        for blk in model.blocks[s].res_blocks:
            w = blk.branch2.conv_a.weight
            extra += w.numel() - w.numel() // 3
    head_delta = (2048 * 400 + 400) - (2048 * 1000 + 1000)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in r101.parameters()) + extra + head_delta


def _randomise_bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.slow
def test_loads_pytorchvideo_slow_r50_and_gives_same_logits():
    from pytorchvideo.models.hub.resnet import slow_r50
    torch.manual_seed(0)
    ref = slow_r50(pretrained=False).eval()
    _randomise_bn_stats(ref)
    model = build_model(get_cfg()).eval()
    result = model.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert ours.shape == (1, 400)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert theirs.abs().max() > 1e-2  # not a trivially small output


def _small_cfg(**ctx):
    cfg = get_cfg()
    cfg.MODEL.WIDTH = 8
    cfg.MODEL.STAGE_DEPTHS = [2, 2, 3, 2]
    cfg.MODEL.NUM_CLASSES = 5
    for k, v in ctx.items():
        cfg.CONTEXT[k] = v
    return cfg


def test_architecture_details():
    model = build_model(_small_cfg())
    stem = model.blocks[0]
    assert stem.conv.kernel_size == (1, 7, 7) and stem.conv.stride == (1, 2, 2)
    assert stem.pool.kernel_size == (1, 3, 3) and stem.pool.stride == (1, 2, 2)
    for s, tk in zip(range(1, 5), (1, 1, 3, 3)):
        for b, blk in enumerate(model.blocks[s].res_blocks):
            assert blk.branch2.conv_a.kernel_size == (tk, 1, 1)
            assert blk.branch2.conv_b.kernel_size == (1, 3, 3)
            stride = 2 if (s > 1 and b == 0) else 1
            assert blk.branch2.conv_b.stride == (1, stride, stride)  # no temporal downsampling
    x = torch.randn(2, 3, 4, 64, 64)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 8 * 32, 4, 2, 2)
    # forward = head(forward_features): global average pool, (dropout), linear
    head = model.blocks[-1]
    expected = feats.mean(dim=(2, 3, 4)) @ head.proj.weight.T + head.proj.bias
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,location,position,expected", [
    ("gc", [[], [1], [0, 2], []], "auto", {(2, 1, "pre"), (3, 0, "pre"), (3, 2, "pre")}),
    ("nl", [[], [1], [0], []], "auto", {(2, 1, "post"), (3, 0, "post")}),
    ("se", "all", "auto", {(s, b, "pre") for s, d in zip(range(1, 5), [2, 2, 3, 2]) for b in range(d)}),
    ("gc", [[], "all", [], [1]], "post_relu", {(2, 0, "post"), (2, 1, "post"), (4, 1, "post")}),
])
def test_context_placement(kind, location, position, expected):
    model = build_model(_small_cfg(TYPE=kind, LOCATION=location, POSITION=position))
    found = set()
    for s in range(1, 5):
        for b, blk in enumerate(model.blocks[s].res_blocks):
            if "context" in blk.branch2._modules:
                found.add((s, b, "pre"))
            if "context" in blk._modules:
                found.add((s, b, "post"))
    assert found == expected
    cls = NonLocalBlock if kind == "nl" else ContextBlock
    assert all(isinstance(m, cls) for m in model.context_blocks())


def test_pre_add_position_is_after_norm_c_before_residual_add():
    """Hand-run one bottleneck: z = relu(shortcut + GC(norm_c(conv_c(...))))."""
    model = build_model(_small_cfg(TYPE="gc", LOCATION=[[0], [], [], []])).eval()
    blk = model.blocks[1].res_blocks[0]
    gc = blk.branch2.context
    with torch.no_grad():
        for p in gc.parameters():
            p.normal_()
    x = torch.randn(1, 8, 2, 8, 8)
    b2 = blk.branch2
    with torch.no_grad():
        y = b2.norm_a(b2.conv_a(x)).relu()
        y = b2.norm_b(b2.conv_b(y)).relu()
        y = b2.norm_c(b2.conv_c(y))
        expected = torch.relu(blk.branch1_norm(blk.branch1_conv(x)) + gc(y))
        torch.testing.assert_close(blk(x), expected)


@pytest.mark.parametrize("kind", ["gc", "snl", "nl"])
def test_zero_init_blocks_leave_random_network_unchanged(kind):
    torch.manual_seed(0)
    base = build_model(_small_cfg())
    _randomise_bn_stats(base, 1)
    with torch.no_grad():
        base.blocks[-1].proj.weight.normal_()
    with_blocks = build_model(_small_cfg(TYPE=kind, LOCATION=[[], "all", "all", "all"]))
    report = load_pretrained(with_blocks, base.state_dict())
    assert report.kept_init and all(".context." in k for k in report.kept_init)
    assert not report.unused
    x = torch.randn(2, 3, 4, 64, 64)
    for mode in ("eval", "train"):
        base.train(mode == "train")
        with_blocks.train(mode == "train")
        torch.manual_seed(1)
        a = base(x)
        torch.manual_seed(1)
        b = with_blocks(x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the blocks are not inert once trained: perturbing them changes the output
    with torch.no_grad():
        for m in with_blocks.context_blocks():
            for p in m.parameters():
                p.add_(0.1)
    with_blocks.eval()
    base.eval()
    assert not torch.allclose(base(x), with_blocks(x), atol=1e-4)


@pytest.mark.parametrize("name", sorted(f for d in ("kinetics400", "toy") for f in
                                        [f"{d}/{n}" for n in os.listdir(os.path.join("configs", d))]))
def test_every_config_converts_to_channels_last_3d(name):
    """Module.to(memory_format=channels_last_3d) converts every 4-D and 5-D parameter: a 4-D
    parameter (the GC LayerNorm's old (Cr, 1, 1, 1) weight) made it raise."""
    model = build_model(load_cfg(os.path.join("configs", name), check_files=False))
    model.to(memory_format=torch.channels_last_3d)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)


@pytest.mark.parametrize("kind", ["gc", "snl", "se", "nl"])
def test_channels_last_3d_model_gives_the_same_logits(kind):
    torch.manual_seed(0)
    model = build_model(_small_cfg(TYPE=kind, LOCATION=[[], "all", "all", "all"], ZERO_INIT=False)).eval()
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        want = model(x)
        model.to(memory_format=torch.channels_last_3d)
        got = model(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("old_shape", [(1, 1, 1), (1, 1)])
def test_checkpoints_with_the_old_layernorm_shape_load(old_shape):
    """GC checkpoints saved with LayerNorm weights (Cr, 1, 1, 1) (earlier gcvideo) or (Cr, 1, 1) load
    through load_pretrained and load_state_dict, and give the same logits."""
    torch.manual_seed(0)
    src = build_model(_small_cfg(TYPE="gc", LOCATION=[[], [0], [0], [0]], ZERO_INIT=False)).eval()
    with torch.no_grad():
        for m in src.context_blocks():
            m.transform[1].weight.uniform_(0.5, 1.5)
            m.transform[1].bias.normal_()
    old = {k: (v.reshape(-1, *old_shape) if ".channel_add_conv.1." in k else v) for k, v in src.state_dict().items()}
    assert sum(".channel_add_conv.1." in k for k in old) == 6
    x = torch.randn(1, 3, 4, 32, 32)
    for load in (lambda m: load_pretrained(m, old), lambda m: m.load_state_dict(old)):
        model = build_model(_small_cfg(TYPE="gc", LOCATION=[[], [0], [0], [0]])).eval()
        load(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x), src(x))


def test_the_backbone_reaches_a_pre_add_block_through_its_residual_hook_only():
    """The residual unit asks its pre_add context block for relu(shortcut + f(y)) through
    ResidualContext.residual, whatever the block (no isinstance on ContextBlock, no fast-path API)."""
    from gcvideo.config import load_cfg
    from gcvideo.layers.residual import ResidualContext
    from gcvideo.models import build_model

    class Scale(ResidualContext):  # f(y) = 2 y, with its own residual: relu(shortcut + 2 y) + 1
        calls = 0

        def forward(self, y):
            return 2 * y

        def residual(self, y, shortcut):
            Scale.calls += 1
            return torch.relu(shortcut + self(y)) + 1

    cfg = load_cfg(None, ["MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]", "MODEL.WIDTH", "8", "MODEL.NUM_CLASSES", "3", "CONTEXT.TYPE", "none",
                          "CONTEXT.LOCATION", "[[], [], [], []]"])
    model = build_model(cfg).eval()
    unit = model.blocks[1].res_blocks[0]
    x = torch.randn(1, unit.branch2.conv_a.in_channels, 2, 8, 8)
    with torch.no_grad():
        shortcut = unit.branch1_norm(unit.branch1_conv(x))
        y = unit.branch2.forward_branch(x)
        unit.branch2.context = Scale()
        out = unit(x)
    assert Scale.calls == 1
    torch.testing.assert_close(out, torch.relu(shortcut + 2 * y) + 1)
    assert [n for n, _ in model.named_context_blocks()] == ["blocks.1.res_blocks.0.branch2.context"]
    unit.branch2.context = None
    with torch.no_grad():
        torch.testing.assert_close(unit(x), torch.relu(shortcut + y))
    assert model.context_blocks() == []
