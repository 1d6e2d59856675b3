"""Export: TorchScript and ONNX graphs give the eager model's outputs; files are never clobbered."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from gcvideo.analysis.export import ExportOptions, export_model
from gcvideo.config import get_cfg
from gcvideo.layers import ContextBlock
from gcvideo.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def _cfg(kind, location):
    cfg = get_cfg()
    cfg.MODEL.WIDTH = 8
    cfg.MODEL.STAGE_DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.NUM_CLASSES = 6
    cfg.CONTEXT.TYPE = kind
    cfg.CONTEXT.LOCATION = location
    cfg.CONTEXT.ZERO_INIT = False  # blocks that change the output, so a wrong export would show
    return cfg


def _model(kind, location, seed=0):
    torch.manual_seed(seed)
    m = build_model(_cfg(kind, location)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
        m.blocks[-1].proj.weight.normal_(0, 0.5, generator=g)
    return m


GC = ("gc", [[], "all", "all", "all"])
NL = ("nl", [[], [0], [0], []])


def test_export_leaves_the_model_as_it_is(tmp_path):
    """The exporters trace a copy; the caller's blocks keep their fused path and their mode."""
    m = _model(*GC).train()
    export_model(m, str(tmp_path / "m.ts"), ExportOptions("torchscript", (4, 32, 32)))
    blocks = [b for b in m.modules() if isinstance(b, ContextBlock)]
    assert blocks and all(b.fused for b in blocks)
    assert all(mod.training for mod in m.modules())


def test_traced_graph_of_the_fused_model_holds_reference_ops_only():
    m = _model(*GC)
    with torch.no_grad():
        graph = str(torch.jit.trace(m, torch.randn(1, 3, 4, 32, 32), check_trace=False).inlined_graph)
    assert "PythonOp" not in graph and "aten::softmax" in graph and "aten::layer_norm" in graph


@pytest.mark.parametrize("spec", [GC, NL], ids=["gc", "nl"])
def test_torchscript_equals_eager(tmp_path, spec):
    m = _model(*spec)
    out = tmp_path / "m.ts"
    info = export_model(m, str(out), ExportOptions("torchscript", (4, 32, 32)))
    assert info["max_rel_err"] <= 1e-4 and out.exists()
    loaded = torch.jit.load(str(out))
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        ref = m(x)
        rel = (loaded(x) - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-4
    assert ref.abs().max() > 1e-3  # not a trivially zero output


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("spec", [GC, NL], ids=["gc", "nl"])
def test_onnx_legacy_equals_eager(tmp_path, spec):
    import onnxruntime as ort

    m = _model(*spec)
    out = tmp_path / "m.onnx"
    info = export_model(m, str(out), ExportOptions("onnx", (4, 32, 32), exporter="legacy"))
    assert info["exporter"] == "legacy" and info["verified_with"] == "onnxruntime"
    assert info["max_rel_err"] <= 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 4, 32, 32)
    got = torch.from_numpy(sess.run(None, {"video": x.numpy()})[0])
    with torch.no_grad():
        ref = m(x)
    assert (got - ref).abs().max() / ref.abs().max() <= 1e-4


@pytest.mark.skipif(not (HAS_ORT and HAS_ONNXSCRIPT), reason="onnxruntime/onnxscript not installed")
def test_onnx_dynamo_exporter(tmp_path):
    m = _model(*NL)
    info = export_model(m, str(tmp_path / "m.onnx"), ExportOptions("onnx", (4, 32, 32), exporter="dynamo"))
    assert info["exporter"] == "dynamo" and info["max_rel_err"] <= 1e-4


def test_never_overwrites(tmp_path):
    m = _model(*GC)
    out = tmp_path / "m.ts"
    out.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(m, str(out), ExportOptions("torchscript", (4, 32, 32)))
    assert out.read_bytes() == b"user data"
    export_model(m, str(out), ExportOptions("torchscript", (4, 32, 32)), overwrite=True)
    assert out.read_bytes() != b"user data"
    assert [p.name for p in tmp_path.iterdir()] == ["m.ts"]  # no temporary left behind
    with pytest.raises(ValueError, match="format"):
        export_model(m, str(tmp_path / "x"), ExportOptions("tflite", (4, 32, 32)))


def test_export_options_are_checked_when_made(tmp_path):
    """ExportOptions refuses a format, an ONNX exporter or a clip size it cannot use with a UsageError
    naming the value (before any model is copied or a file looked at); the clip size is kept as 3 ints."""
    from gcvideo.utils.errors import UsageError

    opts = ExportOptions("onnx", ["4", 32, 32.0], exporter="legacy")
    assert opts.input_shape == (4, 32, 32) and (opts.opset, opts.rtol, opts.seed) == (17, 1e-4, 0)
    with pytest.raises(UsageError, match=r"format 'tflite': expected one of \('torchscript', 'onnx'\)"):
        ExportOptions("tflite")
    with pytest.raises(UsageError, match="exporter 'fx': expected auto, dynamo or legacy"):
        ExportOptions("onnx", exporter="fx")
    for bad in [(4, 32), (0, 32, 32)]:
        with pytest.raises(UsageError, match=rf"input shape {re.escape(str(bad))}: expected T, H, W"):
            ExportOptions("torchscript", bad)


def test_export_tool(tmp_path, capsys):
    """tools/export.py end to end: config + checkpoint -> TorchScript file equal to eager."""
    m = _model(*NL)
    ckpt = tmp_path / "model.pth"
    torch.save({"model": m.state_dict()}, ckpt)
    cfg_file = tmp_path / "nl.yaml"
    cfg_file.write_text("MODEL:\n  WIDTH: 8\n  STAGE_DEPTHS: [1, 1, 1, 1]\n  NUM_CLASSES: 6\n"
                        "CONTEXT:\n  TYPE: nl\n  LOCATION: [[], [0], [0], []]\n"
                        "DATA:\n  NUM_FRAMES: 4\n  TEST_CROP_SIZE: 32\n")
    out = tmp_path / "model.ts"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "export.py"), "--config", str(cfg_file), "--checkpoint",
           str(ckpt), "--format", "torchscript", "--out", str(out), "--input", "4,32,32"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "max relative error" in r.stdout
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = m(x)
        assert (torch.jit.load(str(out))(x) - ref).abs().max() / ref.abs().max() <= 1e-4
    # second time (in this process): refused, the file unchanged
    before = out.read_bytes()
    spec = importlib.util.spec_from_file_location("export_tool", os.path.join(ROOT, "tools", "export.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(cmd[2:]) == 2  # a user error: one line, exit 2 (gcvideo.cli)
    assert "overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_export_without_config_uses_the_checkpoints_own(tmp_path, capsys, load_tool):
    """A gcvideo training checkpoint holds its config: export (like test_net and predict) needs no
    --config; the clip size defaults to the stored config's and the file equals the eager model."""
    from gcvideo.config import dump_cfg

    cfg, m = _cfg(*NL), _model(*NL)
    cfg.DATA.NUM_FRAMES, cfg.DATA.TEST_CROP_SIZE = 4, 32
    ckpt = tmp_path / "checkpoint_epoch0001.pth"
    torch.save({"model": m.state_dict(), "config": dump_cfg(cfg)}, ckpt)
    out = tmp_path / "model.ts"
    assert load_tool("export").main(["--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert "input (N, 3, 4, 32, 32)" in capsys.readouterr().out  # the stored config's clip size
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = m(x)
        assert (torch.jit.load(str(out))(x) - ref).abs().max() / ref.abs().max() <= 1e-4


@pytest.mark.parametrize("name,args", [
    ("export", ["--format", "torchscript", "--out", "{d}/m.ts"]),
    ("visualize_attention", ["{d}/v.mp4", "--out", "{d}/vis"]),
    ("analyze_nonlocal", ["--csv", "{d}/v.csv", "--json", "{d}/s.json"]),
])
def test_checkpoint_without_a_config_asks_for_one(tmp_path, capsys, name, args, load_tool):
    """Weights only (another package's checkpoint): one error line naming the checkpoint and --config."""
    ckpt = tmp_path / "weights.pth"
    torch.save({"model": _model(*GC).state_dict()}, ckpt)
    argv = [a.format(d=tmp_path) for a in args] + ["--checkpoint", str(ckpt)]
    assert load_tool(name).main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "--config" in err[0], err
