"""The one checkpoint loader: every format through every entry point, inference strictness, training
rules, and errors that name the file."""
import os
import sys

import numpy as np
import pytest
import torch

from gcvideo.models import CheckpointMismatchError, build_model, build_model_from_checkpoint, load_pretrained
from gcvideo.utils.io import CheckpointError

from model_helpers import _clip, _py2_pickle, _randomise, _tiny_cfg, _to_caffe2, _to_slowfast  # noqa: E402

ENGINE_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
NL_LOC = [[], [1], [0], []]
SOFTMAX_CFG = ("MODEL:\n  ARCH: slow\nNONLOCAL:\n  LOCATION: [[[]], [[1]], [[0]], [[]]]\n"
               "  INSTANTIATION: softmax\n")


def _write_formats(src, tmp_path, with_nl=True):
    """The same weights as a gcvideo checkpoint, a PySlowFast .pyth and a Caffe2 .pkl."""
    sd = src.state_dict()
    paths = {"gcvideo": tmp_path / "model.pth", "pyslowfast": tmp_path / "model.pyth", "caffe2": tmp_path / "model.pkl"}
    torch.save({"model": sd, "format": "gcvideo-checkpoint-v1"}, paths["gcvideo"])
    torch.save({"model_state": {_to_slowfast(k): v for k, v in sd.items()},
                "cfg": SOFTMAX_CFG if with_nl else "MODEL:\n  ARCH: slow\n"}, paths["pyslowfast"])
    blobs = {_to_caffe2(k): v.numpy().copy() for k, v in sd.items() if _to_caffe2(k)}
    paths["caffe2"].write_bytes(_py2_pickle({"blobs": blobs}))
    return {k: str(v) for k, v in paths.items()}


def test_every_format_gives_the_same_inference_model(tmp_path):
    cfg = _tiny_cfg("nl", NL_LOC, NL_SCALE=True, NL_POOL_POSITION="before_conv")
    src = _randomise(build_model(cfg), seed=11)
    x = _clip()
    with torch.no_grad():
        ref = src(x)
        for fmt, path in _write_formats(src, tmp_path).items():
            model = build_model_from_checkpoint(cfg, path)
            assert not model.training
            torch.testing.assert_close(model(x), ref, rtol=0, atol=0, msg=fmt)


def test_test_net_reads_pyslowfast_and_caffe2_checkpoints(tmp_path):
    """tools/test_net.py's engine path (gcvideo.engine.test, TEST.CHECKPOINT) on the same weights in three
    formats: the same predictions (the .pyth failed with "does not fit the model" and the .pkl with
    "needs arbitrary unpickling" before)."""
    sys.path.insert(0, ENGINE_TESTS)
    from engine_helpers import ok, run_engine
    from engine_synthetic import tiny_cfg

    cfg = tiny_cfg(tmp_path / "src", "CONTEXT.TYPE", "nl", "CONTEXT.LOCATION", "[[], [0], [0], []]",
                   "CONTEXT.NL_SCALE", "True", "CONTEXT.NL_POOL_POSITION", "before_conv")
    src = _randomise(build_model(cfg), seed=12)
    sd = src.state_dict()
    paths = {"gcvideo": tmp_path / "model.pth", "pyslowfast": tmp_path / "model.pyth", "caffe2": tmp_path / "model.pkl"}
    torch.save({"model": sd}, paths["gcvideo"])
    torch.save({"model_state": {_to_slowfast(k): v for k, v in sd.items()}, "cfg": SOFTMAX_CFG.replace(
        "[[[]], [[1]], [[0]], [[]]]", "[[[]], [[0]], [[0]], [[]]]")}, paths["pyslowfast"])
    paths["caffe2"].write_bytes(_py2_pickle({"blobs": {_to_caffe2(k): v.numpy().copy() for k, v in sd.items()
                                                       if _to_caffe2(k)}}))
    predictions = {}
    for fmt, path in paths.items():
        out = tmp_path / fmt
        ok(run_engine(out, "test", {"num_classes": 4}, "TEST.CHECKPOINT", str(path), "CONTEXT.TYPE", "nl",
                      "CONTEXT.LOCATION", "[[], [0], [0], []]", "CONTEXT.NL_SCALE", "True",
                      "CONTEXT.NL_POOL_POSITION", "before_conv"))
        (report,) = [d for d in os.listdir(out) if d.startswith("test_")]
        predictions[fmt] = (out / report / "predictions.csv").read_text()
    assert predictions["pyslowfast"] == predictions["gcvideo"] == predictions["caffe2"]
    assert len(predictions["gcvideo"].splitlines()) > 3


def test_inference_refuses_unused_weights_training_reports_them(tmp_path):
    """An NL checkpoint given to the baseline config: its 65 NL weights mapped to nothing and the model ran
    with other logits; for inference this is an error naming them and where the blocks are."""
    src = _randomise(build_model(_tiny_cfg("nl", NL_LOC)), seed=13)
    path = tmp_path / "nl.pth"
    torch.save({"model": src.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"nl\.pth has \d+ weights that map to nothing.*"
                                                      r"blocks\.2\.res_blocks\.1\.context\.conv_theta\.weight.*"
                                                      r"CONTEXT\.LOCATION \[\[\], \[1\], \[0\], \[\]\]"):
        build_model_from_checkpoint(_tiny_cfg(), str(path))
    rep = load_pretrained(build_model(_tiny_cfg()), str(path), purpose="finetune")
    assert rep.unused and all(".context." in k for k in rep.unused)


def test_training_refuses_unused_backbone_weights(tmp_path):
    deeper = _tiny_cfg()
    deeper.MODEL.STAGE_DEPTHS = [1, 2, 3, 1]
    src = _randomise(build_model(deeper), seed=14)
    path = tmp_path / "deeper.pth"
    torch.save(src.state_dict(), path)
    for purpose in ("finetune", "inference"):
        with pytest.raises(CheckpointMismatchError, match=r"deeper\.pth has \d+ backbone weights with no place.*"
                                                          r"blocks\.3\.res_blocks\.2\..*deeper network"):
            load_pretrained(build_model(_tiny_cfg()), str(path), purpose=purpose)
    # the same through PySlowFast names: the error gives the file's own key
    torch.save({"model_state": {_to_slowfast(k): v for k, v in src.state_dict().items()}}, tmp_path / "deeper.pyth")
    with pytest.raises(CheckpointMismatchError, match=r"s4\.pathway0_res2\."):
        load_pretrained(build_model(_tiny_cfg()), str(tmp_path / "deeper.pyth"))


def test_inference_needs_every_weight_and_the_class_count(tmp_path):
    cfg = _tiny_cfg("gc", [[], [0], [0], []])
    src = _randomise(build_model(cfg), seed=15)
    base = {k: v for k, v in src.state_dict().items() if ".context." not in k}
    torch.save(base, tmp_path / "base.pth")
    with pytest.raises(CheckpointMismatchError, match=r"base\.pth has no weights for \d+ keys.*context.*"
                                                      r"CONTEXT.LOCATION \[\[\], \[0\], \[0\], \[\]\]"):
        build_model_from_checkpoint(cfg, str(tmp_path / "base.pth"))
    other = _tiny_cfg("gc", [[], [0], [0], []])
    other.MODEL.NUM_CLASSES = 7
    torch.save(src.state_dict(), tmp_path / "gc.pth")
    with pytest.raises(CheckpointMismatchError, match=r"gc\.pth.*class count"):
        build_model_from_checkpoint(other, str(tmp_path / "gc.pth"))
    assert load_pretrained(build_model(other), str(tmp_path / "gc.pth")).reinitialised  # fine-tuning: new head


def test_every_checkpoint_error_names_the_file(tmp_path):
    cfg = _tiny_cfg()
    model = build_model(cfg)
    sd = model.state_dict()
    cases = {
        "missing.pth": None,
        "empty.pth": b"",
        "junk.pkl": b"definitely not a pickle",
        "list.pkl": _py2_pickle([1, 2, 3]),
        "no_tensors.pth": {"epoch": 3, "note": "no weights"},
        "no_tensors.pkl": _py2_pickle({"blobs": {"lr": "0.1"}}),
        "unknown_keys.pth": {"foo.weight": torch.zeros(2)},
        "shape.pth": {**sd, "blocks.0.conv.weight": torch.zeros(1, 3, 1, 1, 1)},
        "missing_key.pth": {k: v for k, v in sd.items() if k != "blocks.1.res_blocks.0.branch2.conv_a.weight"},
        "imagenet.pth": {"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)},
        "bomb.pkl": b"\x80\x02c__builtin__\nbytearray\nJ\x00\x94\x35\x77\x85R.",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        for load in (lambda p: load_pretrained(build_model(cfg), p),
                     lambda p: build_model_from_checkpoint(cfg, p)):
            with pytest.raises(CheckpointError) as e:
                load(str(path))
            assert str(path) in str(e.value), (name, str(e.value))


def test_caffe2_scalars_beside_the_weights_are_not_an_inference_error(tmp_path):
    cfg = _tiny_cfg()
    src = _randomise(build_model(cfg), seed=16)
    blobs = {_to_caffe2(k): v.numpy().copy() for k, v in src.state_dict().items() if _to_caffe2(k)}
    blobs["lr"] = np.array([0.01], dtype=np.float32)
    path = tmp_path / "c2.pkl"
    path.write_bytes(_py2_pickle({"blobs": blobs}))
    model = build_model_from_checkpoint(cfg, str(path))
    with torch.no_grad():
        torch.testing.assert_close(model(_clip()), src(_clip()), rtol=0, atol=0)
    blobs["res6_0_branch2a_w"] = np.zeros((4, 4, 1, 1, 1), dtype=np.float32)  # a weight with no gcvideo name
    path.write_bytes(_py2_pickle({"blobs": blobs}))
    with pytest.raises(CheckpointMismatchError, match=r"c2\.pkl.*res6_0_branch2a_w"):
        build_model_from_checkpoint(cfg, str(path))


def test_gcvideo_checkpoint_config_must_match_where_weights_cannot_tell(tmp_path):
    """A gcvideo checkpoint trained with dot_product non-local blocks has the same weights as an
    embedded_gaussian one: its stored config decides, and a config that differs is refused."""
    cfg = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION="dot_product")
    src = _randomise(build_model(cfg), seed=17)
    path = tmp_path / "nl_dot.pth"
    torch.save({"model": src.state_dict(), "config": cfg.dump(), "format": "gcvideo-checkpoint-v1"}, path)
    with pytest.raises(CheckpointMismatchError, match=r"nl_dot\.pth was trained with CONTEXT.NL_INSTANTIATION = "
                                                      r"'dot_product'.*set CONTEXT.NL_INSTANTIATION dot_product"):
        build_model_from_checkpoint(_tiny_cfg("nl", NL_LOC), str(path))
    eps = _tiny_cfg("nl", NL_LOC, NL_INSTANTIATION="dot_product")
    eps.MODEL.BN_EPS = 1e-3
    with pytest.raises(CheckpointMismatchError, match=r"MODEL.BN_EPS"):
        build_model_from_checkpoint(eps, str(path))
    with torch.no_grad():
        torch.testing.assert_close(build_model_from_checkpoint(cfg, str(path))(_clip()), src(_clip()), rtol=0, atol=0)


def test_context_layernorm_loads_in_either_saved_shape(tmp_path):
    """GC LayerNorm parameters saved as (C/r, 1, 1, 1) or as (C/r,) load into the model's shape."""
    cfg = _tiny_cfg("gc", [[], [0], [0], []])
    src = _randomise(build_model(cfg), seed=18)
    sd = src.state_dict()
    ln = [k for k in sd if ".channel_add_conv.1." in k]
    assert ln
    for shape in ((-1,), (-1, 1, 1, 1), (-1, 1, 1)):
        torch.save({k: (v.reshape(shape) if k in ln else v) for k, v in sd.items()}, tmp_path / "gc.pth")
        model = build_model_from_checkpoint(cfg, str(tmp_path / "gc.pth"))
        with torch.no_grad():
            torch.testing.assert_close(model(_clip()), src(_clip()), rtol=0, atol=0)
