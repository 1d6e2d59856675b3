"""2D -> 3D inflation against a torchvision 2D ResNet on a static clip."""
import pytest
import torch
import torchvision

from gcvideo.config import get_cfg, load_cfg
from gcvideo.models import InflationError, build_model, inflate_state_dict, load_pretrained
from gcvideo.models.inflate import InflationReport, map_2d_key
from gcvideo.models.pretrained import inflate_imagenet_checkpoint
from gcvideo.utils.io import CheckpointError, load_checkpoint_file


def _random_2d(depth=50, seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, f"resnet{depth}")()
    return _randomise_bn(net, seed + 1).eval()  # every BN statistic non-zero


def _features_2d(net, x):  # (N, 3, H, W) -> (N, 2048, H/32, W/32)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_key_mapping_examples():
    assert map_2d_key("conv1.weight") == "blocks.0.conv.weight"
    assert map_2d_key("bn1.running_var") == "blocks.0.norm.running_var"
    assert map_2d_key("layer3.5.bn2.running_var") == "blocks.3.res_blocks.5.branch2.norm_b.running_var"
    assert map_2d_key("layer1.0.downsample.0.weight") == "blocks.1.res_blocks.0.branch1_conv.weight"
    assert map_2d_key("layer4.2.conv3.weight") == "blocks.4.res_blocks.2.branch2.conv_c.weight"
    assert map_2d_key("fc.weight") is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "gc"])
def test_static_clip_matches_2d_network(kind):
    """Inflated net on a repeated frame == 2D net on the frame, outside the zero-padding band."""
    net2d = _random_2d(50)
    cfg = get_cfg()
    cfg.CONTEXT.TYPE = kind
    cfg.CONTEXT.LOCATION = [[], "all", "all", "all"] if kind == "gc" else [[], [], [], []]
    model = build_model(cfg).eval()
    report = InflationReport()
    model.load_state_dict(inflate_state_dict({"state_dict": net2d.state_dict()}, model, report))
    assert report.unused_2d == ["fc.weight", "fc.bias"]
    assert len(report.inflated) == 9  # the 3x1x1 conv_a of res4 (6) and res5 (3)
    torch.manual_seed(3)
    frame = torch.randn(1, 3, 64, 64)
    T = 22
    clip = frame.unsqueeze(2).repeat(1, 1, T, 1, 1)  # (1, 3, T, H, W)
    with torch.no_grad():
        f2 = _features_2d(net2d, frame)  # (1, 2048, 2, 2)
        f3 = model.forward_features(clip)  # (1, 2048, T, 2, 2)
    band = 9  # 9 temporal convs (res4: 6, res5: 3) with zero padding 1 reach 9 steps from each end
    for t in range(band, T - band):
        err = (f3[:, :, t] - f2).abs().max() / f2.abs().max()
        assert err < 1e-4, (t, float(err))
    # the padding band really differs (the test can fail)
    assert (f3[:, :, 0] - f2).abs().max() / f2.abs().max() > 1e-3


def test_kernels_repeated_and_divided():
    net2d = _random_2d(50)
    model = build_model(get_cfg())
    sd = inflate_state_dict(net2d.state_dict(), model)
    w2 = net2d.layer3[1].conv1.weight  # (256, 1024, 1, 1)
    w3 = sd["blocks.3.res_blocks.1.branch2.conv_a.weight"]  # (256, 1024, 3, 1, 1)
    assert w3.shape == (256, 1024, 3, 1, 1)
    for t in range(3):
        torch.testing.assert_close(w3[:, :, t], w2 / 3)
    torch.testing.assert_close(sd["blocks.0.conv.weight"][:, :, 0], net2d.conv1.weight)
    torch.testing.assert_close(sd["blocks.2.res_blocks.0.branch1_norm.running_var"],
                               net2d.layer2[0].downsample[1].running_var)


def test_errors_name_the_key():
    model = build_model(get_cfg())
    sd = _random_2d(50).state_dict()
    missing = {k: v for k, v in sd.items() if k != "layer2.1.bn3.weight"}
    with pytest.raises(InflationError, match=r"blocks\.2\.res_blocks\.1\.branch2\.norm_c\.weight"):
        inflate_state_dict(missing, model)
    bad = dict(sd)
    bad["layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(InflationError, match=r"layer1\.0\.conv2\.weight"):
        inflate_state_dict(bad, model)
    r101 = _random_2d(101).state_dict()  # a whole R101 checkpoint into the R50 model
    with pytest.raises(InflationError, match=r"no place in the 3D model, e\.g\. layer3\.6\.conv1\.weight.*deeper"):
        inflate_state_dict(r101, model)
    r50_into_101 = build_model(load_cfg("configs/kinetics400/slow_r101_8x8.yaml", check_files=False))
    with pytest.raises(InflationError, match=r"no weights for backbone key blocks\.3\.res_blocks\.6\."):
        inflate_state_dict(sd, r50_into_101)


def test_inflate_tool_writes_checkpoint_and_never_overwrites(tmp_path, capsys):
    net2d = _random_2d(50)
    src = tmp_path / "resnet50.pth"
    torch.save({"model": net2d.state_dict()}, src)
    dst = tmp_path / "out.pth"
    inflate_imagenet_checkpoint(str(src), "configs/kinetics400/slow_r50_8x8_gc5.yaml", str(dst),
                                opts=["DATA.LABEL_MAP", ""])
    out = capsys.readouterr().out
    assert "keys new in 3D" in out and "fc.weight" in out
    ck = load_checkpoint_file(str(dst))
    assert "blocks.3.res_blocks.5.branch2.context.conv_mask.weight" in ck["model"]
    before = dst.read_bytes()
    with pytest.raises(FileExistsError):
        inflate_imagenet_checkpoint(str(src), "configs/kinetics400/slow_r50_8x8_gc5.yaml", str(dst),
                                    opts=["DATA.LABEL_MAP", ""])
    assert dst.read_bytes() == before
    # and load_pretrained recognises both the 2D file and the inflated 3D file
    model = build_model(get_cfg())
    assert load_pretrained(model, str(src)).format == "imagenet-2d"
    assert load_pretrained(model, str(dst)).format == "3d"


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_needing_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint_file(str(path))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint_file(str(empty))


# ---- 2D GC / SE attention blocks: the official GCNet layout and timm's ResNets ----
class _GCNetContextBlock(torch.nn.Module):
    """The official GCNet ContextBlock (xvjiarui/GCNet, mmdet/ops/gcb/context_block.py), written out:
    softmax attention pooling (conv_mask), channel_add_conv = 1x1 conv, LayerNorm([C/r, 1, 1]), ReLU,
    1x1 conv; out = x + channel_add_conv(context)."""

    def __init__(self, c, ratio):
        super().__init__()
        planes = int(c * ratio)
        self.conv_mask = torch.nn.Conv2d(c, 1, 1)
        self.channel_add_conv = torch.nn.Sequential(torch.nn.Conv2d(c, planes, 1), torch.nn.LayerNorm([planes, 1, 1]),
                                                    torch.nn.ReLU(inplace=True), torch.nn.Conv2d(planes, c, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        mask = torch.softmax(self.conv_mask(x).view(n, 1, h * w), dim=2).unsqueeze(-1)  # (N, 1, HW, 1)
        context = torch.matmul(x.view(n, 1, c, h * w), mask).view(n, c, 1, 1)
        return x + self.channel_add_conv(context)


def _gcnet_bottleneck_forward(self, x):
    """GCNet's mmdet Bottleneck: conv1..bn3, then context_block, then the residual add and ReLU."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.context_block(self.bn3(self.conv3(out)))
    return self.relu(out + identity)


def _randomise_attention(net, names=("context_block", "se"), seed=5):
    """Every attention-block parameter random (timm and GCNet zero some at init), so no branch hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if any(f".{a}." in n for a in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if n.endswith("norm.weight") else 0.0))
    return net


def _gcnet_resnet50(ratio=1 / 16):
    """torchvision ResNet-50 with GCNet context blocks in c3-c5 (GCNet's ImageNet r16 setting)."""
    import types

    net = _random_2d(50)
    for stage in (net.layer2, net.layer3, net.layer4):
        for blk in stage:
            blk.context_block = _GCNetContextBlock(blk.conv3.out_channels, ratio)
            blk.forward = types.MethodType(_gcnet_bottleneck_forward, blk)
    return _randomise_attention(net).eval()


def _randomise_bn(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def _timm_resnet50(attn):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    net = timm.models.resnet.ResNet(timm.models.resnet.Bottleneck, [3, 4, 6, 3], block_args=dict(attn_layer=attn))
    return _randomise_attention(_randomise_bn(net)).eval()


def _static_clip_check(net2d, features_2d, cfg, expect_context_keys, tol):
    """Inflated net on T identical frames == 2D net on the frame, at every frame (temporal kernels 1)."""
    cfg.MODEL.TEMPORAL_KERNELS = [1, 1, 1, 1]  # no temporal padding band: every frame is exact
    model = build_model(cfg).eval()
    report = InflationReport()
    model.load_state_dict(inflate_state_dict(net2d.state_dict(), model, report))
    assert len(report.context) == expect_context_keys and not [k for k in report.new_in_3d if ".context." in k]
    torch.manual_seed(3)
    frame = torch.randn(1, 3, 64, 64)
    clip = frame.unsqueeze(2).repeat(1, 1, 3, 1, 1)  # (1, 3, T, H, W)
    with torch.no_grad():
        f2 = features_2d(net2d, frame)  # (1, 2048, 2, 2)
        f3 = model.forward_features(clip)  # (1, 2048, T, 2, 2)
        for t in range(3):
            err = (f3[:, :, t] - f2).abs().max() / f2.abs().max()
            assert err < tol, (t, float(err))
        # the blocks matter: the same weights without them differ (the test can fail)
        for blk in model.context_blocks():
            blk.transform[-1].weight.zero_()
            blk.transform[-1].bias.fill_(0.0 if blk.fusion == "add" else 30.0)
        assert ((model.forward_features(clip)[:, :, 0] - f2).abs().max() / f2.abs().max()) > 1e-3
    return report


@pytest.mark.slow
def test_gcnet_official_layout_inflates_on_a_static_clip():
    net2d = _gcnet_resnet50()
    assert "layer2.0.context_block.channel_add_conv.1.weight" in net2d.state_dict()
    cfg = get_cfg()
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION, cfg.CONTEXT.RATIO = "gc", [[], "all", "all", "all"], 1 / 16
    rep = _static_clip_check(net2d, _features_2d, cfg, expect_context_keys=13 * 8, tol=1e-4)
    assert "blocks.2.res_blocks.0.branch2.context.channel_add_conv.1.weight" in rep.reshaped  # (C/r,1,1) LN
    assert not any("context_block" in k for k in rep.unused_2d)


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["gc", "se"])
def test_timm_gc_and_se_resnets_inflate_on_a_static_clip(attn):
    net2d = _timm_resnet50(attn)
    cfg = get_cfg()
    cfg.CONTEXT.LOCATION = ["all"] * 4
    if attn == "gc":  # timm's GlobalContext: attention pooling, LayerNorm, sigmoid gate (mul), 1/8
        cfg.CONTEXT.TYPE, cfg.CONTEXT.FUSION, cfg.CONTEXT.RATIO = "gc", "mul", 1 / 8
        n_keys = 16 * 8
    else:  # timm's SEModule: average pooling, no norm, sigmoid gate, 1/16
        cfg.CONTEXT.TYPE, cfg.CONTEXT.RATIO = "se", 1 / 16
        n_keys = 16 * 4
    rep = _static_clip_check(net2d, lambda n, x: n.forward_features(x), cfg, n_keys, tol=1e-4)
    assert not any(".se." in k for k in rep.unused_2d)
    assert ("eps 1e-6" in rep.summary()) == (attn == "gc")


def test_attention_blocks_of_another_kind_are_refused_with_the_settings():
    net2d = _timm_resnet50("gc")
    cfg = get_cfg()
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION = "gc", [[], [], [], [0]]  # gcvideo's GC: add fusion, ratio 1/4
    with pytest.raises(InflationError, match=r"layer4\.0\.se computes another function.*CONTEXT.POOLING att "
                                             r"CONTEXT.TRANSFORM bottleneck CONTEXT.NORM layernorm CONTEXT.FUSION mul "
                                             r"CONTEXT.RATIO 0.125"):
        inflate_state_dict(net2d.state_dict(), build_model(cfg))
    # a model without blocks there: the 2D blocks' weights are reported unused (fine-tuning a baseline)
    rep = InflationReport()
    inflate_state_dict(net2d.state_dict(), build_model(get_cfg()), rep)
    assert any(".se.conv_attn." in k for k in rep.unused_2d)


@pytest.mark.parametrize("name", ["gcresnet50t", "resnet50d"])
def test_other_2d_layouts_are_named_as_such(tmp_path, name):
    timm = pytest.importorskip("timm")
    sd = timm.create_model(name, pretrained=False).state_dict()
    with pytest.raises(InflationError, match=r"not a ResNet of the torchvision/timm kind.*stem"):
        inflate_state_dict(sd, build_model(get_cfg()))
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    with pytest.raises(InflationError, match=rf"{name}\.pth.*not a ResNet of the torchvision/timm kind"):
        load_pretrained(build_model(get_cfg()), str(path))
