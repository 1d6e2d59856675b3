"""Export a trained model to TorchScript or ONNX, verified against the eager model.

Reference: the models of Y. Cao et al., "Global Context Networks" (TPAMI 2020) on
Slow-only ResNet-3D. Exported graphs take a clip (N, 3, T, H, W) with a dynamic batch N
and fixed T, H, W (``ExportOptions.input_shape``) and return logits (N, num_classes).

The exporters trace an eval-mode CPU copy of the model. While a model is traced (torch.jit,
torch.export, dynamo) its context blocks run their reference ops (the fused path of
``gcvideo.layers.fused`` steps aside), so the graphs hold standard ops only (conv3d, softmax,
einsum, layer_norm, max_pool3d, ...).

ONNX: ``exporter="auto"`` uses PyTorch's torch.export-based exporter when ``onnxscript`` is
installed and falls back to the TorchScript-based one (deprecated in PyTorch, no extra
dependency) if it is not or if it fails; ``"dynamo"`` / ``"legacy"`` force one.
Verification: the exported model and the eager model run on a fresh random clip of batch 2;
max|exported - eager| / max|eager| must be <= ``rtol`` (1e-4); ONNX is run with
onnxruntime when installed (otherwise only ``onnx.checker`` when onnx is installed).
The file is written atomically (temporary file + rename) and an existing file is only
replaced with ``overwrite=True``.
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gcvideo.utils.errors import UsageError, UserError

__all__ = ["FORMATS", "EXPORTERS", "ExportOptions", "export_model", "ExportMismatchError"]

FORMATS = ("torchscript", "onnx")
EXPORTERS = ("auto", "dynamo", "legacy")  # the ONNX exporters (module docstring)


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_model`` writes and how it is checked; a value it cannot use is a ``UsageError`` here."""
    format: str  # one of FORMATS
    input_shape: Sequence[int] = (8, 256, 256)  # T, H, W of the exported graph's clips (N, 3, T, H, W)
    exporter: str = "auto"  # ONNX: one of EXPORTERS
    opset: int = 17  # ONNX opset (the torch.export-based exporter uses at least 18)
    rtol: float = 1e-4  # the largest max|exported - eager| / max|eager| written
    seed: int = 0  # the random example and check clips

    def __post_init__(self):
        if self.format not in FORMATS:
            raise UsageError(f"format {self.format!r}: expected one of {FORMATS}")
        if self.exporter not in EXPORTERS:
            raise UsageError(f"exporter {self.exporter!r}: expected auto, dynamo or legacy")
        if len(self.input_shape) != 3 or any(int(v) < 1 for v in self.input_shape):
            raise UsageError(f"input shape {tuple(self.input_shape)}: expected T, H, W (3 positive integers)")
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))


class ExportMismatchError(UserError, RuntimeError):
    """The exported model's outputs differ from the eager model's beyond the tolerance."""


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace deprecation notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def _onnx_bytes(model: nn.Module, example: torch.Tensor, exporter: str, opset: int) -> Tuple[bytes, str]:
    names = dict(input_names=["video"], output_names=["logits"])
    if exporter in ("auto", "dynamo"):
        try:
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=max(opset, 18),
                                         dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                         verbose=False, **names)
            return prog.model_proto.SerializeToString(), "dynamo"
        except Exception as e:  # not installed, or the new exporter cannot handle something
            if exporter == "dynamo":
                raise
            print(f"note: torch.export-based ONNX exporter unavailable ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:160] if str(e) else ''}); using the TorchScript-based exporter")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}}, **names)
    return buf.getvalue(), "legacy"


def _run_onnx(data: bytes, x: torch.Tensor) -> Optional[torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        try:
            import onnx
            onnx.checker.check_model(onnx.load_from_string(data))
        except ImportError:
            pass
        return None
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return torch.from_numpy(out)


@torch.no_grad()
def export_model(model: nn.Module, out: str, options: ExportOptions, overwrite: bool = False) -> Dict:
    """Export ``model`` to ``out`` as ``options.format`` ("torchscript" | "onnx") for clips
    (N, 3, *options.input_shape); verify against eager; an existing ``out`` is kept unless ``overwrite``.
    Returns {"path", "format", "exporter", "max_rel_err", "verified_with", "input_shape", "bytes"}."""
    from gcvideo.utils.io import atomic_write_bytes, refuse_existing

    fmt, input_shape, rtol = options.format, options.input_shape, options.rtol
    refuse_existing(out, overwrite)
    m = copy.deepcopy(model).eval().cpu()  # the copy is traced; the caller's model is left as it is
    g = torch.Generator().manual_seed(options.seed)
    example = torch.randn(1, 3, *[int(v) for v in input_shape], generator=g)  # (1, 3, T, H, W)
    check = torch.randn(2, 3, *[int(v) for v in input_shape], generator=g)  # (2, 3, T, H, W), unseen
    was_training = model.training
    try:  # the original eager model (its fused path where it has one), in eval mode
        ref = model.eval()(check.to(next(model.parameters()).device)).float().cpu()
    finally:
        model.train(was_training)
    if fmt == "torchscript":
        data, used = _torchscript_bytes(m, example), "torch.jit.trace"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(io.BytesIO(data))
        got, verified = loaded(check).float(), "torch.jit.load"
    else:
        data, used = _onnx_bytes(m, example, options.exporter, options.opset)
        got = _run_onnx(data, check)
        verified = "onnxruntime" if got is not None else "onnx.checker (onnxruntime not installed)"
    err = _rel_err(got, ref) if got is not None else None
    if err is not None and not err <= rtol:
        raise ExportMismatchError(f"exported {fmt} model differs from the eager model: max relative error "
                                  f"{err:.3g} > {rtol:g}; {out} was not written")
    atomic_write_bytes(out, data)
    return {"path": out, "format": fmt, "exporter": used, "max_rel_err": err, "verified_with": verified,
            "input_shape": [int(v) for v in input_shape], "bytes": len(data)}
