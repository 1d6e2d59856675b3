"""Start a model from existing weights: 2D ImageNet ResNets (inflated) or 3D checkpoints.

``load_pretrained(model, path)`` recognises
- a torchvision/timm 2D ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...):
  inflated with ``inflate_state_dict``;
- a 3D state dict in pytorchvideo / gcvideo names (``blocks.0.conv.weight``, ...), e.g.
  pytorchvideo's ``slow_r50`` Kinetics checkpoint or a gcvideo training checkpoint;
- a PySlowFast Slow-only checkpoint (``.pyth``, ``model_state`` with ``s1.pathway0_stem.*``,
  ``s{k}.pathway0_res{i}.*``, ``s{k}.pathway0_nonlocal{i}.*``, ``head.projection.*``);
- a Caffe2 ``.pkl`` (``{"blobs": {name: ndarray}}``, ``conv1_w``, ``res2_0_branch2a_w``, ...),
  read by a restricted unpickler (numpy arrays and plain containers only).
PySlowFast and Caffe2 names are translated by ``gcvideo.models.interop``; BN
``num_batches_tracked`` counters that a checkpoint lacks (Caffe2) keep the model's value.
Context blocks absent from the checkpoint keep their (zero) initialisation, so a
baseline checkpoint starts a GC model with the baseline's function; a head whose
class count differs is re-initialised. A backbone key that is missing or has a
different shape is an error naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Union

import torch
import torch.nn as nn

from gcvideo.layers import layernorm_as_vectors
from gcvideo.models.inflate import (InflationError, InflationReport, _compact, _is_new_module_key,
                                    inflate_state_dict, unwrap_state_dict)
from gcvideo.models.interop import caffe2_blobs_to_tensors, convert_state_dict, is_caffe2_blobs, load_weights_file

__all__ = ["load_pretrained", "LoadReport", "detect_format"]


@dataclass
class LoadReport:
    source: str = ""
    format: str = ""  # "imagenet-2d" | "3d" | "pyslowfast" | "caffe2"
    mapped: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)  # model keys not in the checkpoint (context blocks)
    reinitialised: List[str] = field(default_factory=list)  # head keys with another class count
    unused: List[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    inflation: InflationReport = None
    # PySlowFast / Caffe2: model key -> checkpoint key it was loaded from
    renamed: Dict[str, str] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)  # Caffe2 *_momentum / non-array entries
    filled: List[str] = field(default_factory=list)  # BN num_batches_tracked absent from the checkpoint

    def summary(self) -> str:
        if self.inflation is not None:
            return f"{self.source}: 2D ImageNet ResNet, inflated.\n{self.inflation.summary()}"
        kind = {"pyslowfast": "PySlowFast checkpoint", "caffe2": "Caffe2 checkpoint"}.get(self.format,
                                                                                           "3D checkpoint")
        lines = [f"{self.source}: {kind}, {len(self.mapped)} keys loaded, {len(self.kept_init)} kept "
                 f"their initialisation, {len(self.reinitialised)} re-initialised, {len(self.unused)} unused"
                 + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        for name, keys in (("kept initialisation", self.kept_init), ("re-initialised (class count differs)",
                           self.reinitialised), ("unused checkpoint keys", self.unused),
                           ("skipped (optimizer state / not arrays)", self.skipped),
                           ("BN counters kept", self.filled)):
            if keys:
                lines.append(f"  {name}: {_compact(keys)}")
        return "\n".join(lines)


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """The checkpoint kind from its key names: "imagenet-2d", "3d" (pytorchvideo/gcvideo),
    "pyslowfast" or "caffe2"."""
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        return "imagenet-2d"
    if any(k.startswith("blocks.") for k in sd):
        return "3d"
    if any(k.startswith("s1.pathway0_stem.") or k.startswith("s2.pathway0_res") for k in sd):
        return "pyslowfast"
    if "conv1_w" in sd or any(k.startswith("res_conv1_bn_") or k.startswith("res2_0_branch") for k in sd):
        return "caffe2"
    raise InflationError("unrecognised checkpoint: expected a torchvision/timm ResNet (conv1.weight, "
                         "layer1.*), a pytorchvideo/gcvideo 3D model (blocks.*), a PySlowFast model "
                         "(s1.pathway0_stem.*) or Caffe2 blobs (conv1_w, res2_0_branch2a_w); first keys: "
                         + ", ".join(list(sd)[:5]))


def _check_nonlocal_layout(model: nn.Module, sd: Mapping[str, torch.Tensor], fmt: str, name: str) -> None:
    """PySlowFast / Caffe2 non-local weights only compute their function in blocks that max-pool
    the input before phi/g and scale the softmax logits by 1/sqrt(inner channels), as those
    codes do; other settings would load without error and give different outputs."""
    from gcvideo.layers import NonLocalBlock

    wrong = [n for n, m in model.named_modules() if isinstance(m, NonLocalBlock) and any(
        k.startswith(n + ".") for k in sd) and (m.pool_position != "before_conv" or
                                              (m.instantiation == "embedded_gaussian" and not m.scale))]
    if wrong:
        raise InflationError(
            f"{name}: {fmt} non-local blocks max-pool their input before phi/g and scale the logits by "
            f"1/sqrt(inner channels), but {wrong[0]} (and {len(wrong) - 1} more) is built otherwise; "
            "set CONTEXT.NL_POOL_POSITION before_conv and CONTEXT.NL_SCALE True")


def load_pretrained(model: nn.Module, source: Union[str, Mapping], verbose: bool = False) -> LoadReport:
    """Load weights from ``source`` (a path read with weights_only=True, or a state dict) into ``model``."""
    name = source if isinstance(source, str) else "<state dict>"
    obj = load_weights_file(source) if isinstance(source, str) else source
    skipped: List[str] = []
    if is_caffe2_blobs(obj):
        obj, skipped = caffe2_blobs_to_tensors(obj)
    sd = unwrap_state_dict(obj)
    rep = LoadReport(source=name, format=detect_format(sd), skipped=skipped)
    if rep.format in ("pyslowfast", "caffe2"):
        sd, rep.renamed, untranslated = convert_state_dict(sd, rep.format, head_index=len(model.blocks) - 1,
                                                           target=model.state_dict())
        _check_nonlocal_layout(model, sd, rep.format, name)
    else:
        untranslated = []
    if rep.format == "imagenet-2d":
        rep.inflation = InflationReport()
        model.load_state_dict(inflate_state_dict(sd, model, rep.inflation), strict=True)
    else:
        target = model.state_dict()
        sd = layernorm_as_vectors(model, sd)  # GC LayerNorm weights saved as (Cr, 1, 1[, 1])
        out: Dict[str, torch.Tensor] = {}
        head = f"blocks.{len(model.blocks) - 1}."
        for k, v in target.items():
            if k in sd and sd[k].shape == v.shape:
                out[k] = sd[k].to(v.dtype)
                rep.mapped.append(k)
            elif k in sd and k.startswith(head):
                out[k] = v
                rep.reinitialised.append(k)
            elif k not in sd and _is_new_module_key(k, model):
                out[k] = v
                rep.kept_init.append(k)
            elif k not in sd and k.endswith(".num_batches_tracked") and rep.format == "caffe2":
                out[k] = v
                rep.filled.append(k)
            elif k in sd:
                src = f" (from {rep.renamed[k]})" if k in rep.renamed else ""
                raise InflationError(f"{name}: shape mismatch for {k}{src}: checkpoint {tuple(sd[k].shape)} vs "
                                     f"model {tuple(v.shape)}")
            else:
                raise InflationError(f"{name}: checkpoint has no weights for backbone key {k}")
        rep.unused = [rep.renamed.get(k, k) for k in sd if k not in target] + untranslated
        model.load_state_dict(out, strict=True)
    if verbose:
        print(rep.summary())
    return rep
