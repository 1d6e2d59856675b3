"""Start a model from existing weights: 2D ImageNet ResNets (inflated) or 3D checkpoints.

``load_pretrained(model, path)`` recognises
- a torchvision/timm 2D ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...):
  inflated with ``inflate_state_dict``;
- a 3D state dict in pytorchvideo / gcvideo names (``blocks.0.conv.weight``, ...), e.g.
  pytorchvideo's ``slow_r50`` Kinetics checkpoint or a gcvideo training checkpoint.
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

from gcvideo.models.inflate import (InflationError, InflationReport, _compact, _is_new_module_key,
                                    inflate_state_dict, unwrap_state_dict)
from gcvideo.utils.io import load_checkpoint_file

__all__ = ["load_pretrained", "LoadReport", "detect_format"]


@dataclass
class LoadReport:
    source: str = ""
    format: str = ""  # "imagenet-2d" | "3d"
    mapped: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)  # model keys not in the checkpoint (context blocks)
    reinitialised: List[str] = field(default_factory=list)  # head keys with another class count
    unused: List[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    inflation: InflationReport = None

    def summary(self) -> str:
        if self.inflation is not None:
            return f"{self.source}: 2D ImageNet ResNet, inflated.\n{self.inflation.summary()}"
        lines = [f"{self.source}: 3D checkpoint, {len(self.mapped)} keys loaded, {len(self.kept_init)} kept "
                 f"their initialisation, {len(self.reinitialised)} re-initialised, {len(self.unused)} unused"]
        for name, keys in (("kept initialisation", self.kept_init), ("re-initialised (class count differs)",
                           self.reinitialised), ("unused checkpoint keys", self.unused)):
            if keys:
                lines.append(f"  {name}: {_compact(keys)}")
        return "\n".join(lines)


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        return "imagenet-2d"
    if any(k.startswith("blocks.") for k in sd):
        return "3d"
    raise InflationError("unrecognised checkpoint: expected a torchvision/timm ResNet (conv1.weight, "
                         "layer1.*) or a pytorchvideo/gcvideo 3D model (blocks.*); first keys: "
                         + ", ".join(list(sd)[:5]))


def load_pretrained(model: nn.Module, source: Union[str, Mapping], verbose: bool = False) -> LoadReport:
    """Load weights from ``source`` (a path read with weights_only=True, or a state dict) into ``model``."""
    name = source if isinstance(source, str) else "<state dict>"
    obj = load_checkpoint_file(source) if isinstance(source, str) else source
    sd = unwrap_state_dict(obj)
    rep = LoadReport(source=name, format=detect_format(sd))
    if rep.format == "imagenet-2d":
        rep.inflation = InflationReport()
        model.load_state_dict(inflate_state_dict(sd, model, rep.inflation), strict=True)
    else:
        target = model.state_dict()
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
            elif k in sd:
                raise InflationError(f"{name}: shape mismatch for {k}: checkpoint {tuple(sd[k].shape)} vs "
                                     f"model {tuple(v.shape)}")
            else:
                raise InflationError(f"{name}: checkpoint has no weights for backbone key {k}")
        rep.unused = [k for k in sd if k not in target]
        model.load_state_dict(out, strict=True)
    if verbose:
        print(rep.summary())
    return rep
