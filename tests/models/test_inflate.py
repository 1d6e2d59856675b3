"""2D -> 3D inflation against a torchvision 2D ResNet on a static clip."""
import pytest
import torch
import torchvision

from gcvideo.config import get_cfg, load_cfg
from gcvideo.models import InflationError, build_model, inflate_state_dict, load_pretrained
from gcvideo.models.inflate import InflationReport, map_2d_key
from gcvideo.models.checkpoints import inflate_imagenet_checkpoint
from gcvideo.utils.io import CheckpointError, load_checkpoint_file


def _random_2d(depth=50, seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, f"resnet{depth}")()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


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
