"""mmaction2 SlowOnly R50 (``ResNet3dSlowOnly`` + ``I3DHead``) and its ``NonLocal3d`` variants into gcvideo.

mmcv does not build with current torch, so the reference below is mmaction2's forward written out
in float64 from its source (mmaction/models/backbones/resnet3d.py ``Bottleneck3d``/``ResNet3d``,
resnet3d_slowonly.py, heads/i3d_head.py, mmcv/cnn/bricks/non_local.py ``_NonLocalNd``/``NonLocal3d``)
and run on a state dict in mmaction2's own key names, with random weights and BN statistics.
"""
import re

import pytest
import torch
import torch.nn.functional as F

from gcvideo.models import CheckpointMismatchError, build_model, build_model_from_checkpoint, load_pretrained

from model_helpers import _randomise, _tiny_cfg  # noqa: E402

DEPTHS = [1, 2, 2, 1]
NL_FLAGS = [[0], [0, 1], [1, 0], [0]]  # mmaction2's backbone.non_local: res3 block 1, res4 block 0
NL_LOC = [[], [1], [0], []]


# ---- gcvideo name -> mmaction2 name, by hand ----
_MM_PART = {"branch2.conv_a": "conv1.conv", "branch2.norm_a": "conv1.bn", "branch2.conv_b": "conv2.conv",
            "branch2.norm_b": "conv2.bn", "branch2.conv_c": "conv3.conv", "branch2.norm_c": "conv3.bn",
            "branch1_conv": "downsample.conv", "branch1_norm": "downsample.bn"}


def _to_mmaction2(key, sub_sample):
    """None for keys mmaction2 does not have (the conv_out bias before the NL BN)."""
    p = key.split(".")
    if p[1] == "0":
        return f"backbone.conv1.{'conv' if p[2] == 'conv' else 'bn'}.{p[3]}"
    if p[1] == "5":
        return f"cls_head.fc_cls.{p[3]}"
    stage, block, rest = p[1], p[3], p[4:]
    pre = f"backbone.layer{stage}.{block}"
    if rest[0] == "context":
        mod, param = rest[1], rest[2]
        if mod == "conv_out":
            return None if param == "bias" else f"{pre}.non_local_block.conv_out.conv.{param}"
        if mod == "bn":
            return f"{pre}.non_local_block.conv_out.bn.{param}"
        if mod == "concat_project":
            return f"{pre}.non_local_block.concat_project.conv.{param}"
        name = mod[len("conv_"):]
        sub = ".0" if sub_sample and name in ("g", "phi") else ""
        return f"{pre}.non_local_block.{name}{sub}.conv.{param}"
    return f"{pre}.{_MM_PART['.'.join(rest[:-1])]}.{rest[-1]}"


def _mm_state_dict(model, sub_sample=True):
    out = {}
    for k, v in model.state_dict().items():
        name = _to_mmaction2(k, sub_sample)
        if name is None:
            continue
        if name.endswith("concat_project.conv.weight"):
            v = v.reshape(1, -1, 1, 1)  # mmcv's concat projection is a Conv2d
        out[name] = v.clone()
    return out


# ---- mmaction2's forward, written out from its source ----
def _conv_module(x, sd, p, stride=1, padding=0, act=True):
    """mmcv ConvModule: conv (no bias: a norm follows) -> BN3d (eval) -> ReLU."""
    x = F.conv3d(x, sd[f"{p}.conv.weight"], sd.get(f"{p}.conv.bias"), stride, padding)
    if f"{p}.bn.weight" in sd:
        x = F.batch_norm(x, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                         sd[f"{p}.bn.bias"], False, 0.0, 1e-5)
    return F.relu(x) if act else x


def _mm_nonlocal(x, sd, p, mode, use_scale, sub_sample):
    """mmcv _NonLocalNd.forward for NonLocal3d: g/phi (convs, then a (1,2,2) max pool with sub_sample),
    the pairwise function of ``mode``, y = W g, out = x + conv_out(y) (conv + BN)."""
    n, c = x.shape[:2]
    pool = (lambda t: F.max_pool3d(t, (1, 2, 2))) if sub_sample else (lambda t: t)
    sub = ".0" if sub_sample else ""
    g_x = pool(_conv_module(x, sd, f"{p}.g{sub}", act=False))
    inter = g_x.shape[1]
    g_x = g_x.reshape(n, inter, -1).permute(0, 2, 1)  # (N, Lk, Ci)
    if mode == "gaussian":
        theta_x = x.reshape(n, c, -1).permute(0, 2, 1)
        phi_x = pool(x).reshape(n, c, -1)
    elif mode == "concatenation":
        theta_x = _conv_module(x, sd, f"{p}.theta", act=False).reshape(n, inter, -1, 1)
        phi_x = pool(_conv_module(x, sd, f"{p}.phi{sub}", act=False)).reshape(n, inter, 1, -1)
    else:
        theta_x = _conv_module(x, sd, f"{p}.theta", act=False).reshape(n, inter, -1).permute(0, 2, 1)
        phi_x = pool(_conv_module(x, sd, f"{p}.phi{sub}", act=False)).reshape(n, inter, -1)
    if mode == "gaussian":
        pw = torch.matmul(theta_x, phi_x).softmax(dim=-1)
    elif mode == "embedded_gaussian":
        pw = torch.matmul(theta_x, phi_x)
        if use_scale:
            pw = pw / theta_x.shape[-1] ** 0.5
        pw = pw.softmax(dim=-1)
    elif mode == "dot_product":
        pw = torch.matmul(theta_x, phi_x)
        pw = pw / pw.shape[-1]
    else:  # concatenation
        h, w = theta_x.size(2), phi_x.size(3)
        feat = torch.cat([theta_x.repeat(1, 1, 1, w), phi_x.repeat(1, 1, h, 1)], dim=1)
        pw = F.relu(F.conv2d(feat, sd[f"{p}.concat_project.conv.weight"]))
        pw = pw.view(n, h, w) / w
    y = torch.matmul(pw, g_x).permute(0, 2, 1).reshape(n, inter, *x.shape[2:])
    return x + _conv_module(y, sd, f"{p}.conv_out", act=False)


def _mm_forward(sd, x, nl=None):
    """ResNet3dSlowOnly (conv1 1x7x7 stride (1,2,2), maxpool (1,3,3)/(1,2,2), no pool2, inflate (0,0,1,1)
    3x1x1, style pytorch: stride on conv2) + I3DHead (global average pool, fc_cls)."""
    x = _conv_module(x, sd, "backbone.conv1", stride=(1, 2, 2), padding=(0, 3, 3))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for s, depth in enumerate(DEPTHS):
        for i in range(depth):
            p = f"backbone.layer{s + 1}.{i}"
            ss = (1, 2, 2, 2)[s] if i == 0 else 1
            inflate = (0, 0, 1, 1)[s]
            out = _conv_module(x, sd, f"{p}.conv1", padding=(1, 0, 0) if inflate else 0)
            out = _conv_module(out, sd, f"{p}.conv2", stride=(1, ss, ss), padding=(0, 1, 1))
            out = _conv_module(out, sd, f"{p}.conv3", act=False)
            identity = _conv_module(x, sd, f"{p}.downsample", stride=(1, ss, ss), act=False) \
                if f"{p}.downsample.conv.weight" in sd else x
            x = F.relu(out + identity)
            if nl is not None and NL_FLAGS[s][i]:
                x = _mm_nonlocal(x, sd, f"{p}.non_local_block", **nl)
    x = x.mean(dim=(2, 3, 4))
    return F.linear(x, sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])


def _meta(mode, use_scale, sub_sample):
    """mmengine's meta['cfg']: the config's pretty text."""
    return {"cfg": "model = dict(\n    type='Recognizer3D',\n    backbone=dict(\n        type='ResNet3dSlowOnly',\n"
                   f"        non_local=((0, ), (0, 1), (1, 0), (0, )),\n        non_local_cfg=dict(\n"
                   f"            sub_sample={sub_sample},\n            use_scale={use_scale},\n"
                   "            norm_cfg=dict(type='BN3d', requires_grad=True),\n"
                   f"            mode='{mode}')),\n    cls_head=dict(type='I3DHead', num_classes=5))\n"}


def _clip64():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _save(tmp_path, sd, meta=None, name="mmaction2.pth"):
    path = tmp_path / name
    torch.save({"meta": meta or {"mmaction2_version": "1.2.0"}, "state_dict": sd}, path)
    return str(path)


def test_slowonly_r50_matches_mmaction2_forward(tmp_path):
    cfg = _tiny_cfg()
    src = _randomise(build_model(cfg), seed=21)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in _mm_state_dict(src).items()}
    assert "backbone.conv1.conv.weight" in sd and "backbone.layer1.0.conv1.bn.weight" in sd
    assert "cls_head.fc_cls.weight" in sd and "backbone.layer2.0.downsample.conv.weight" in sd
    path = _save(tmp_path, sd)
    model = build_model_from_checkpoint(cfg, path).double()
    x = _clip64()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _mm_forward(sd, x), rtol=1e-10, atol=1e-10)
    assert load_pretrained(build_model(cfg), path).format == "mmaction2"


CASES = [("embedded_gaussian", False, True), ("embedded_gaussian", True, False), ("dot_product", False, True),
         ("gaussian", False, True), ("concatenation", False, False)]


@pytest.mark.parametrize("mode,use_scale,sub_sample", CASES)
def test_nonlocal3d_variants_match_mmaction2_forward(tmp_path, mode, use_scale, sub_sample):
    inst = {"concatenation": "concat"}.get(mode, mode)
    cfg = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION=inst, NL_SCALE=use_scale,
                    NL_POOL=[1, 2, 2] if sub_sample else [], NL_POOL_POSITION="after_conv")
    src = _randomise(build_model(cfg), seed=22)  # every BN statistic and the zero-initialised NL BN non-zero
    sd = {k: v.double() if v.is_floating_point() else v for k, v in _mm_state_dict(src, sub_sample).items()}
    assert any(re.search(r"non_local_block\.g(\.0)?\.conv\.weight", k) for k in sd)
    path = _save(tmp_path, sd, _meta(mode, use_scale, sub_sample))
    model = build_model_from_checkpoint(cfg, path).double()
    rep = load_pretrained(build_model(cfg), path, purpose="inference")
    assert all(k.endswith("conv_out.bias") or k.endswith("num_batches_tracked") for k in rep.filled) and \
        any(k.endswith("conv_out.bias") for k in rep.filled)
    x = _clip64()
    with torch.no_grad():
        ref = _mm_forward(sd, x, nl=dict(mode=mode, use_scale=use_scale, sub_sample=sub_sample))
        torch.testing.assert_close(model(x), ref, rtol=1e-10, atol=1e-10)
        assert (ref - _mm_forward(sd, x)).abs().max() > 1e-3  # the non-local blocks matter (the test can fail)


def test_nonlocal_settings_that_differ_are_refused(tmp_path):
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=False, NL_POOL=[1, 2, 2], NL_POOL_POSITION="after_conv")
    src = _randomise(build_model(cfg), seed=23)
    path = _save(tmp_path, _mm_state_dict(src, True), _meta("embedded_gaussian", False, True), "nl_eg.pth")
    for wrong, fix in ((dict(NL_SCALE=True), "CONTEXT.NL_SCALE False"),
                       (dict(NL_POOL_POSITION="before_conv"), "CONTEXT.NL_POOL_POSITION after_conv"),
                       (dict(NL_POOL=[]), r"CONTEXT.NL_POOL '\[1, 2, 2\]'"),
                       (dict(NL_INSTANTIATION="dot_product"), "CONTEXT.NL_INSTANTIATION embedded_gaussian")):
        with pytest.raises(CheckpointMismatchError, match=r"nl_eg\.pth.*mmaction2.*" + fix):
            load_pretrained(build_model(_tiny_cfg("nl", NL_LOC, **dict(
                dict(NL_SCALE=False, NL_POOL=[1, 2, 2], NL_POOL_POSITION="after_conv"), **wrong))), path)
    # into the baseline config: for inference the NL weights are an error naming them and the settings
    with pytest.raises(CheckpointMismatchError, match=r"non_local_block.*CONTEXT.TYPE nl CONTEXT.LOCATION "
                                                      r"'\[\[\], \[1\], \[0\], \[\]\]'"):
        build_model_from_checkpoint(_tiny_cfg(), path)


def test_without_a_stored_config_the_unverifiable_part_is_reported(tmp_path):
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=False, NL_POOL=[1, 2, 2], NL_POOL_POSITION="after_conv")
    src = _randomise(build_model(cfg), seed=24)
    path = _save(tmp_path, _mm_state_dict(src, True), None, "no_meta.pth")
    rep = load_pretrained(build_model(cfg), path)
    assert rep.notes and "could not be checked" in rep.summary()
    # what the keys do show (sub_sample: a max pool after the convs) is still checked
    with pytest.raises(CheckpointMismatchError, match=r"no_meta\.pth.*max-pool the phi/g outputs"):
        load_pretrained(build_model(_tiny_cfg("nl", NL_LOC, NL_POOL_POSITION="before_conv")), path)


def test_backbone_options_that_weights_do_not_show_are_refused(tmp_path):
    src = _randomise(build_model(_tiny_cfg()), seed=25)
    for option in ("style='caffe'", "with_pool2=True", "conv1_stride_t=2"):
        meta = {"cfg": f"model = dict(backbone=dict(type='ResNet3dSlowOnly', depth=50, {option}))"}
        path = _save(tmp_path, _mm_state_dict(src), meta, "option.pth")
        with pytest.raises(CheckpointMismatchError, match=r"option\.pth.*" + re.escape(option.split("=")[0])):
            load_pretrained(build_model(_tiny_cfg()), path)
