"""Checkpoint interop: PySlowFast / Caffe2 names, the restricted unpickler, baseline + context blocks.

The name tables below are written by hand from the PySlowFast and Caffe2 naming
conventions, independently of gcvideo.models.interop, so a mapping error there
shows up here as a missing key or a different output.
"""
import os
import pickle

import numpy as np
import pytest
import torch

from gcvideo.models import CheckpointMismatchError, build_model, load_pretrained
from gcvideo.models.interop import caffe2_to_gcvideo_key, slowfast_to_gcvideo_key
from gcvideo.models.pretrained import add_context_blocks
from gcvideo.models.safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_pickle_load
from gcvideo.models.weights_file import load_weights_object
from gcvideo.utils.io import CheckpointError

from model_helpers import _clip, _py2_pickle, _randomise, _tiny_cfg, _to_caffe2, _to_slowfast  # noqa: E402


NL_LOC = [[], [1], [0], []]  # res3 block 1, res4 block 0


def _nl_model(seed=0):
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=True, NL_POOL_POSITION="before_conv")  # PySlowFast's layout
    return cfg, _randomise(build_model(cfg), seed)


def test_key_examples():
    assert slowfast_to_gcvideo_key("s4.pathway0_res3.branch2.b_bn.running_var") == \
        "blocks.3.res_blocks.3.branch2.norm_b.running_var"
    assert slowfast_to_gcvideo_key("s3.pathway0_nonlocal1.conv_theta.weight") == \
        "blocks.2.res_blocks.1.context.conv_theta.weight"
    assert slowfast_to_gcvideo_key("s2.pathway0_res0.branch1_bn.weight") == \
        "blocks.1.res_blocks.0.branch1_norm.weight"
    assert slowfast_to_gcvideo_key("head.projection.weight") == "blocks.5.proj.weight"
    assert slowfast_to_gcvideo_key("s1.pathway0_pool.weight") is None
    assert caffe2_to_gcvideo_key("res4_5_branch2c_bn_riv") == "blocks.3.res_blocks.5.branch2.norm_c.running_var"
    assert caffe2_to_gcvideo_key("nonlocal_conv3_1_out_b") == "blocks.2.res_blocks.1.context.conv_out.bias"
    assert caffe2_to_gcvideo_key("res_conv1_bn_s") == "blocks.0.norm.weight"
    assert caffe2_to_gcvideo_key("res2_0_branch2a_w_momentum") is None


def test_pyslowfast_checkpoint_loads_and_gives_same_outputs(tmp_path):
    cfg, src = _nl_model()
    sd = {_to_slowfast(k): v.clone() for k, v in src.state_dict().items()}
    assert len(sd) == len(src.state_dict())
    path = tmp_path / "SLOW_8x8_R50_NL.pyth"
    torch.save({"epoch": 196, "model_state": {"module." + k: v for k, v in sd.items()},
                "optimizer_state": {}, "cfg": "MODEL:\n  ARCH: slow\n"}, path)
    dst = build_model(cfg).eval()
    rep = load_pretrained(dst, str(path))
    assert rep.format == "pyslowfast"
    assert len(rep.mapped) == len(sd) and not rep.unused and not rep.kept_init
    assert rep.renamed["blocks.2.res_blocks.1.context.conv_theta.weight"] == "s3.pathway0_nonlocal1.conv_theta.weight"
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert "PySlowFast checkpoint" in rep.summary()


def test_pyslowfast_nonlocal_at_another_block_is_reported(tmp_path):
    cfg, src = _nl_model()
    sd = {_to_slowfast(k): v for k, v in src.state_dict().items()}
    other = build_model(_tiny_cfg("nl", [[], [0], [0], []], NL_SCALE=True,
                                  NL_POOL_POSITION="before_conv"))  # res3 NL at block 0
    rep = load_pretrained(other, sd)
    assert any(k.startswith("s3.pathway0_nonlocal1.") for k in rep.unused)
    assert any(k.startswith("blocks.2.res_blocks.0.context.") for k in rep.kept_init)
    # a backbone tensor missing is an error that names the gcvideo key
    del sd["s4.pathway0_res1.branch2.b.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.3\.res_blocks\.1\.branch2\.conv_b\.weight"):
        load_pretrained(build_model(cfg), sd)


def _pyslowfast_nonlocal(x, w, pool=(1, 2, 2), instantiation="softmax"):
    """PySlowFast's Nonlocal.forward (slowfast/models/nonlocal_helper.py), written out in float64 from
    its weights ``w`` (PySlowFast names): theta on x, then x max-pooled before phi and g, softmax of
    theta^T phi / sqrt(inner) ("softmax") or theta^T phi / number of key positions ("dot_product"),
    conv_out, BN (eval), residual."""
    import torch.nn.functional as F

    n, c, t, h, ww = x.shape
    conv = lambda v, name: F.conv3d(v, w[name + ".weight"], w[name + ".bias"])  # noqa: E731
    theta = conv(x, "conv_theta").flatten(2)  # (N, Ci, L)
    xp = F.max_pool3d(x, pool, pool)
    phi, g = conv(xp, "conv_phi").flatten(2), conv(xp, "conv_g").flatten(2)  # (N, Ci, Lk)
    inner = theta.shape[1]
    theta_phi = torch.einsum("nct,ncp->ntp", theta, phi)  # (N, L, Lk)
    if instantiation == "softmax":
        att = torch.softmax(theta_phi * inner ** -0.5, dim=2)
    else:
        att = theta_phi / theta_phi.shape[2]
    y = torch.einsum("ntg,ncg->nct", att, g).reshape(n, inner, t, h, ww)
    p = conv(y, "conv_out")
    p = F.batch_norm(p, w["norm.running_mean"], w["norm.running_var"], w["norm.weight"], w["norm.bias"],
                     False, 0.0, 1e-5)
    return x + p


def test_pyslowfast_nonlocal_semantics_match():
    """A PySlowFast non-local block's weights (newer releases name its BN "norm") give PySlowFast's
    output in gcvideo with the layout its checkpoints need; any other layout is refused at load."""
    from gcvideo.layers import NonLocalBlock

    torch.manual_seed(0)
    c, inner = 16, 8
    w = {f"{n}.{p}": torch.randn(*s, dtype=torch.float64) * 0.3 for n, cin, cout in
         (("conv_theta", c, inner), ("conv_phi", c, inner), ("conv_g", c, inner), ("conv_out", inner, c))
         for p, s in (("weight", (cout, cin, 1, 1, 1)), ("bias", (cout,)))}
    w.update({"norm.weight": torch.rand(c, dtype=torch.float64) + 0.5, "norm.bias": torch.randn(c, dtype=torch.float64),
              "norm.running_mean": torch.randn(c, dtype=torch.float64) * 0.1,
              "norm.running_var": torch.rand(c, dtype=torch.float64) + 0.5,
              "norm.num_batches_tracked": torch.tensor(7)})
    x = torch.randn(2, c, 4, 8, 8, dtype=torch.float64)
    expect = _pyslowfast_nonlocal(x, w)
    sd = {f"s3.pathway0_nonlocal1.{k}": v for k, v in w.items()}
    ours = {slowfast_to_gcvideo_key(k): v for k, v in sd.items()}
    prefix = "blocks.2.res_blocks.1.context."
    block = NonLocalBlock(c, inner, pool=(1, 2, 2), pool_position="before_conv", scale=True).double().eval()
    block.load_state_dict({k[len(prefix):]: v for k, v in ours.items()})
    with torch.no_grad():
        torch.testing.assert_close(block(x), expect, rtol=1e-10, atol=1e-10)
        other = NonLocalBlock(c, inner, pool=(1, 2, 2), pool_position="after_conv", scale=True).double().eval()
        other.load_state_dict(block.state_dict())
        assert (other(x) - expect).abs().max() > 1e-3  # the other layout is a different function
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=True)  # after_conv: refused for PySlowFast weights
    _, src = _nl_model()
    with pytest.raises(CheckpointMismatchError, match="NL_POOL_POSITION before_conv"):
        load_pretrained(build_model(cfg), {_to_slowfast(k): v for k, v in src.state_dict().items()})


def test_caffe2_pickle_loads_and_gives_same_outputs(tmp_path):
    cfg, src = _nl_model(seed=3)
    blobs = {}
    for k, v in src.state_dict().items():
        name = _to_caffe2(k)
        if name is None:
            continue
        blobs[name] = v.numpy().copy()
        if name.endswith("_w"):
            blobs[name + "_momentum"] = np.zeros_like(blobs[name])
    blobs["pred_w"] = blobs["pred_w"].reshape(5, -1, 1, 1, 1)  # FC stored as a 1x1x1 conv: reshaped
    blobs["lr"] = np.array([0.01], dtype=np.float32)  # an array with no place: unused
    path = tmp_path / "i3d_nonlocal.pkl"
    path.write_bytes(_py2_pickle({"blobs": blobs, "model_iter": 7, "note": "caffe2"}))
    obj = load_weights_object(str(path))
    assert obj["blobs"]["conv1_w"].dtype == np.float32
    dst = build_model(cfg).eval()
    rep = load_pretrained(dst, str(path), verbose=True)
    assert rep.format == "caffe2"
    assert rep.unused == ["lr"]
    assert sorted(rep.skipped) == sorted(n for n in blobs if n.endswith("_momentum"))
    assert all(k.endswith("num_batches_tracked") for k in rep.filled) and rep.filled
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_restricted_unpickler_loads_numpy_protocols():
    obj = {"blobs": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5),
                     "i": np.array([1, 2], dtype=np.int64)}, "t": (1, [2.0, None], {"x": True})}
    for proto in (2, 4, 5):
        out = safe_pickle_load(pickle.dumps(obj, protocol=proto))
        np.testing.assert_array_equal(out["blobs"]["a"], obj["blobs"]["a"])
        assert out["blobs"]["s"] == 2.5 and out["t"] == obj["t"]
    out = safe_pickle_load(_py2_pickle(obj))  # Python-2 style strings, read with latin1
    np.testing.assert_array_equal(out["blobs"]["i"], [1, 2])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"blobs": {"conv1_w": np.zeros(2)}, "x": _Evil(marker)}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        safe_pickle_load(data)
    assert not marker.exists()
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="evil.pkl"):
        load_weights_object(str(path))
    with pytest.raises(CheckpointError):
        load_pretrained(build_model(_tiny_cfg()), str(path))
    assert not marker.exists()
    # other ways to name a callable: builtins.eval, copyreg reconstructor
    for payload in (b"cbuiltins\neval\n(S'1+1'\ntR.", b"ccopy_reg\n_reconstructor\n(tR."):
        with pytest.raises(UnsafePickleError):
            RestrictedUnpickler(__import__("io").BytesIO(payload)).load()
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pkl"):
        load_weights_object(str(junk))


def _object_dtype_attacks():
    """Pickles that use only allowed callables but make numpy read raw bytes as object pointers:
    an object dtype whose flags ``dtype.__setstate__`` cleared, then a scalar / an array of it."""
    import struct

    a = bytearray(pickle.dumps(np.array([None], dtype=object), protocol=2))
    i = a.index(b"K\x3ft")
    a[i + 1] = 0  # dtype flags 63 -> 0: numpy would no longer treat the items as objects
    j = a.index(b"]q\x11Na")
    a[j:j + 5] = b"C\x08" + struct.pack("<Q", 0x4141414141414141)  # the "object" is a fake pointer
    s = pickle.dumps(np.float64(1.0), protocol=2)
    ma = b"numpy._core.multiarray" if b"numpy._core" in s else b"numpy.core.multiarray"
    scalar = (b"\x80\x02c" + ma + b"\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R"
              b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
              b"C\x08" + struct.pack("<Q", 0x4141414141414141) + b"\x86R.")
    return {"object_array": bytes(a), "object_scalar": scalar}


@pytest.mark.parametrize("name", ["object_array", "object_scalar"])
def test_restricted_unpickler_refuses_object_dtypes(tmp_path, name):
    """Refused with a clear error, in a child process so that a regression crashes it, not pytest."""
    import subprocess
    import sys

    path = tmp_path / f"{name}.pkl"
    path.write_bytes(_object_dtype_attacks()[name])
    code = ("import sys; from gcvideo.models.safe_pickle import safe_pickle_load, UnsafePickleError\n"
            "try:\n    obj = safe_pickle_load(open(sys.argv[1], 'rb').read())\n"
            "    print('LOADED', repr(obj)[:80])\n"
            "except UnsafePickleError as e:\n    print('REFUSED', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("REFUSED") and "'|O'" in r.stdout, (r.returncode, r.stdout,
                                                                                        r.stderr[-500:])


@pytest.mark.parametrize("kind,location", [("gc", [[], "all", "all", [0]]), ("snl", [[], [1], [0, 1], []]),
                                           ("nl", NL_LOC)])
def test_baseline_plus_zero_init_blocks_equals_baseline(tmp_path, kind, location):
    """The two-stage recipe: a trained baseline + new zero-initialised blocks = the baseline."""
    base = _randomise(build_model(_tiny_cfg()), seed=5)
    path = tmp_path / "baseline.pth"
    torch.save({"model": base.state_dict()}, path)
    cfg = _tiny_cfg(kind, location)
    model, rep = add_context_blocks(cfg, str(path))
    model.eval()
    assert rep.format == "3d" and rep.kept_init and all(".context." in k for k in rep.kept_init)
    assert len(model.context_blocks()) > 0
    x = _clip(2)
    with torch.no_grad():
        ref = base(x)
        torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)
        # the test can fail: blocks with non-zero last layers change the output
        for blk in model.context_blocks():
            last = blk.bn if kind == "nl" else blk.transform[-1]
            last.weight.normal_(0, 0.5)
        assert (model(x) - ref).abs().max() > 1e-4


def test_pytorchvideo_style_checkpoint_file(tmp_path):
    """pytorchvideo hub checkpoints hold {"model_state": ...} in pytorchvideo names (= ours)."""
    from pytorchvideo.models.resnet import create_resnet

    ref = create_resnet(input_channel=3, model_depth=50, model_num_class=5, dropout_rate=0.0, stem_dim_out=8,
                        stem_conv_kernel_size=(1, 7, 7), stem_conv_stride=(1, 2, 2), stem_pool_stride=(1, 2, 2),
                        stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
                        stage_conv_b_kernel_size=((1, 3, 3),) * 4, head_pool_kernel_size=(4, 1, 1),
                        head_activation=None)
    _randomise(ref, seed=9)
    path = tmp_path / "SLOW_8x8_R50_tiny.pyth"
    torch.save({"model_state": ref.state_dict()}, path)
    cfg = _tiny_cfg()
    cfg.MODEL.STAGE_DEPTHS = [3, 4, 6, 3]
    model = build_model(cfg).eval()
    rep = load_pretrained(model, str(path))
    assert rep.format == "3d" and len(rep.mapped) == len(ref.state_dict()) and not rep.unused
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


# ---- PySlowFast configs read from the .pyth ----
def _slowfast_cfg_text(instantiation="dot_product", location="[[[]], [[1]], [[0]], [[]]]", extra=""):
    """The parts of a PySlowFast cfg.dump() that matter here, as in configs/Kinetics/SLOW_NLN_8x8_R50.yaml
    (its NONLOCAL.LOCATION [[[]], [[1, 3]], [[1, 3, 5]], [[]]] shrunk to the tiny model's depth)."""
    return (f"MODEL:\n  ARCH: slow\n  NUM_CLASSES: 5\nRESNET:\n  DEPTH: 50\nBN:\n  NORM_TYPE: batchnorm\n"
            f"NONLOCAL:\n  LOCATION: {location}\n  GROUP: [[1], [1], [1], [1]]\n"
            f"  INSTANTIATION: {instantiation}\n" + extra)


def _pyth(tmp_path, src, cfg_text, name="SLOW_NLN_8x8_R50.pyth"):
    path = tmp_path / name
    torch.save({"epoch": 196, "model_state": {_to_slowfast(k): v.clone() for k, v in src.state_dict().items()},
                "optimizer_state": {}, "cfg": cfg_text}, path)
    return str(path)


def test_pyslowfast_dot_product_config_is_read_and_refused_with_the_right_fix(tmp_path):
    """PySlowFast's own SLOW_NLN config (dot_product, its default) against the README's softmax settings:
    refused, naming the keys that build the checkpoint's function (not NL_SCALE True)."""
    cfg = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION="dot_product", NL_POOL_POSITION="before_conv")
    src = _randomise(build_model(cfg), seed=4)
    path = _pyth(tmp_path, src, _slowfast_cfg_text("dot_product"))
    readme = _tiny_cfg("nl", NL_LOC, NL_SCALE=True, NL_POOL_POSITION="before_conv")
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained(build_model(readme), path)
    msg = str(e.value)
    assert "SLOW_NLN_8x8_R50.pyth" in msg and "CONTEXT.NL_INSTANTIATION dot_product" in msg
    assert "CONTEXT.LOCATION '[[], [1], [0], []]'" in msg and "NL_POOL_POSITION before_conv" in msg
    assert "NL_SCALE True" not in msg.split("set ")[-1]
    # gcvideo's defaults (embedded_gaussian, after_conv): the same fix, not "NL_SCALE True"
    with pytest.raises(CheckpointMismatchError, match="CONTEXT.NL_INSTANTIATION dot_product"):
        load_pretrained(build_model(_tiny_cfg("nl", NL_LOC)), path)
    # the settings the message gives load it exactly
    dst = build_model(cfg).eval()
    rep = load_pretrained(dst, path, purpose="inference")
    assert rep.settings.known and rep.settings.instantiation == "dot_product" and not rep.notes
    with torch.no_grad():
        x = _clip()
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_pyslowfast_softmax_config_needs_scale_and_before_conv(tmp_path):
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=True, NL_POOL_POSITION="before_conv")
    src = _randomise(build_model(cfg), seed=5)
    path = _pyth(tmp_path, src, _slowfast_cfg_text("softmax"))
    assert load_pretrained(build_model(cfg), path).settings.scale is True
    for wrong in (dict(NL_INSTANTIATION="dot_product", NL_POOL_POSITION="before_conv"),
                  dict(NL_SCALE=False, NL_POOL_POSITION="before_conv"), dict(NL_SCALE=True)):
        with pytest.raises(CheckpointMismatchError, match=r"NL_INSTANTIATION embedded_gaussian .*NL_POOL_POSITION "
                                                 r"before_conv CONTEXT.NL_SCALE True"):
            load_pretrained(build_model(_tiny_cfg("nl", NL_LOC, **wrong)), path)
    # a pool kernel the model does not have
    with pytest.raises(CheckpointMismatchError, match=r"NL_POOL '\[1, 1, 1\]'|NL_POOL '\[\]'"):
        load_pretrained(build_model(cfg), _pyth(tmp_path, src, _slowfast_cfg_text(
            "softmax", extra="  POOL: [[[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]], "
            "[[1, 1, 1], [1, 1, 1]]]\n"), "nopool.pyth"))


def test_pyslowfast_settings_gcvideo_cannot_build_are_refused(tmp_path):
    cfg = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION="dot_product", NL_POOL_POSITION="before_conv")
    src = _randomise(build_model(cfg), seed=6)
    grouped = _slowfast_cfg_text().replace("GROUP: [[1], [1], [1], [1]]", "GROUP: [[1], [2], [2], [1]]")
    with pytest.raises(CheckpointMismatchError, match=r"grouped.pyth.*NONLOCAL.GROUP \[2\]"):
        load_pretrained(build_model(cfg), _pyth(tmp_path, src, grouped, "grouped.pyth"))
    c2d = _slowfast_cfg_text().replace("ARCH: slow", "ARCH: c2d")
    with pytest.raises(CheckpointMismatchError, match=r"MODEL.ARCH c2d"):
        load_pretrained(build_model(cfg), _pyth(tmp_path, src, c2d, "c2d.pyth"))
    stride = _slowfast_cfg_text().replace("RESNET:\n", "RESNET:\n  STRIDE_1X1: true\n")
    with pytest.raises(CheckpointMismatchError, match=r"RESNET.STRIDE_1X1 True"):  # same shapes, another function
        load_pretrained(build_model(cfg), _pyth(tmp_path, src, stride, "stride1x1.pyth"))


def test_pyslowfast_nonlocal_checkpoint_into_baseline_config_is_refused_for_inference(tmp_path):
    """An NL checkpoint given to the baseline config: its 'non-local' weights would be dropped
    (logits off); for inference that is an error naming them and the settings to use."""
    from gcvideo.models import build_model_from_checkpoint

    cfg = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION="dot_product", NL_POOL_POSITION="before_conv")
    src = _randomise(build_model(cfg), seed=7)
    path = _pyth(tmp_path, src, _slowfast_cfg_text())
    with pytest.raises(CheckpointMismatchError) as e:
        build_model_from_checkpoint(_tiny_cfg(), path)
    msg = str(e.value)
    assert "s3.pathway0_nonlocal1.conv_theta.weight" in msg and "SLOW_NLN_8x8_R50.pyth" in msg
    assert "CONTEXT.TYPE nl CONTEXT.LOCATION '[[], [1], [0], []]'" in msg
    # fine-tuning the baseline from it reports the non-local weights as unused
    rep = load_pretrained(build_model(_tiny_cfg()), path)
    assert any(k.startswith("s3.pathway0_nonlocal1.") for k in rep.unused)


def test_pyslowfast_dot_product_block_matches_reference():
    """PySlowFast's dot_product Nonlocal (theta^T phi / number of key positions) in float64 == gcvideo's
    dot_product block built with before_conv pooling, on the same weights."""
    from gcvideo.layers import NonLocalBlock

    torch.manual_seed(1)
    c, inner = 16, 8
    w = {f"{n}.{p}": torch.randn(*s, dtype=torch.float64) * 0.3 for n, cin, cout in
         (("conv_theta", c, inner), ("conv_phi", c, inner), ("conv_g", c, inner), ("conv_out", inner, c))
         for p, s in (("weight", (cout, cin, 1, 1, 1)), ("bias", (cout,)))}
    w.update({"bn.weight": torch.rand(c, dtype=torch.float64) + 0.5, "bn.bias": torch.randn(c, dtype=torch.float64),
              "bn.running_mean": torch.randn(c, dtype=torch.float64) * 0.1,
              "bn.running_var": torch.rand(c, dtype=torch.float64) + 0.5, "bn.num_batches_tracked": torch.tensor(7)})
    x = torch.randn(2, c, 4, 8, 8, dtype=torch.float64)
    expect = _pyslowfast_nonlocal(x, {k.replace("bn.", "norm."): v for k, v in w.items()},
                                  instantiation="dot_product")
    block = NonLocalBlock(c, inner, instantiation="dot_product", pool=(1, 2, 2),
                          pool_position="before_conv").double().eval()
    block.load_state_dict(w)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expect, rtol=1e-10, atol=1e-10)
        softmax = _pyslowfast_nonlocal(x, {k.replace("bn.", "norm."): v for k, v in w.items()})
        assert (softmax - expect).abs().max() > 1e-3  # the two instantiations differ (the test can fail)


def _pyslowfast_forward(sd, x, depths, instantiation, nl_loc):
    """PySlowFast's ResNet (MODEL.ARCH slow) forward in eval, written out from its source
    (video_model_builder.ResNet, stem_helper.ResNetBasicStem, resnet_helper.ResBlock /
    BottleneckTransform with STRIDE_1X1 False, Nonlocal, head_helper.ResNetBasicHead), in PySlowFast's
    key names. Temporal kernels of "slow": stem 1, res2 1, res3 1, res4 3, res5 3. Returns the head's
    projection (its eval softmax is applied by the caller)."""
    import torch.nn.functional as F

    def bn(v, p):
        return F.batch_norm(v, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    x = F.relu(bn(F.conv3d(x, sd["s1.pathway0_stem.conv.weight"], None, (1, 2, 2), (0, 3, 3)), "s1.pathway0_stem.bn"))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for s, depth in enumerate(depths):
        tk = (1, 1, 3, 3)[s]
        for i in range(depth):
            p = f"s{s + 2}.pathway0_res{i}"
            stride = (1, 2, 2, 2)[s] if i == 0 else 1
            a = F.relu(bn(F.conv3d(x, sd[f"{p}.branch2.a.weight"], None, 1, (tk // 2, 0, 0)), f"{p}.branch2.a_bn"))
            b = F.relu(bn(F.conv3d(a, sd[f"{p}.branch2.b.weight"], None, (1, stride, stride), (0, 1, 1)),
                          f"{p}.branch2.b_bn"))
            c = bn(F.conv3d(b, sd[f"{p}.branch2.c.weight"]), f"{p}.branch2.c_bn")
            short = bn(F.conv3d(x, sd[f"{p}.branch1.weight"], None, (1, stride, stride)), f"{p}.branch1_bn") \
                if f"{p}.branch1.weight" in sd else x
            x = F.relu(short + c)
            if i in nl_loc[s]:
                w = {k[len(f"s{s + 2}.pathway0_nonlocal{i}."):].replace("bn.", "norm."): v for k, v in sd.items()
                     if k.startswith(f"s{s + 2}.pathway0_nonlocal{i}.")}
                x = _pyslowfast_nonlocal(x, w, instantiation=instantiation)
    x = F.adaptive_avg_pool3d(x, 1).permute(0, 2, 3, 4, 1)  # ResNetBasicHead: pool, (N, T, H, W, C)
    return F.linear(x, sd["head.projection.weight"], sd["head.projection.bias"]).flatten(1)


@pytest.mark.parametrize("instantiation", ["dot_product", "softmax"])
def test_pyslowfast_checkpoint_matches_pyslowfast_forward(tmp_path, instantiation):
    """A .pyth with its cfg, loaded with the settings the cfg calls for, against PySlowFast's forward."""
    ctx = dict(NL_INSTANTIATION="dot_product") if instantiation == "dot_product" else dict(NL_SCALE=True)
    cfg = _tiny_cfg("nl", NL_LOC, NL_POOL_POSITION="before_conv", **ctx)
    src = _randomise(build_model(cfg), seed=8)
    path = _pyth(tmp_path, src, _slowfast_cfg_text(instantiation))
    sd = {k: v.double() if v.is_floating_point() else v for k, v in
          torch.load(path, weights_only=True)["model_state"].items()}
    model = build_model(cfg).double().eval()
    load_pretrained(model, path, purpose="inference")
    x = _clip().double()
    with torch.no_grad():
        ref = _pyslowfast_forward(sd, x, cfg.MODEL.STAGE_DEPTHS, instantiation, NL_LOC)
        torch.testing.assert_close(model(x), ref, rtol=1e-10, atol=1e-10)
        # PySlowFast's eval output is the softmax of this (HEAD_ACT softmax)
        torch.testing.assert_close(torch.softmax(model(x), 1), torch.softmax(ref, 1), rtol=1e-10, atol=1e-12)
