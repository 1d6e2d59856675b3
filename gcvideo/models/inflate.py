"""Inflate 2D ImageNet ResNet weights into a Slow-only ResNet-3D.

Reference: J. Carreira, A. Zisserman, "Quo Vadis, Action Recognition? A New Model
and the Kinetics Dataset" (CVPR 2017), Sec. 2.4: a 2D kernel is repeated over the
3D kernel's time extent and divided by it, so a static clip gives the 2D
network's activations. BN parameters and statistics are copied; the 2D
classifier is dropped (the video head is new); context blocks keep their
initialisation.

Accepts torchvision and timm ResNet-50/101 state dicts (``conv1.weight``,
``layer3.5.bn2.running_var``, ``fc.weight``), also wrapped under ``state_dict``
or ``model`` keys and with a ``module.`` prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from gcvideo.models.checkpoint_file import unwrap_state_dict
from gcvideo.utils.io import CheckpointError

__all__ = ["inflate_state_dict", "InflationReport", "InflationError", "CheckpointMismatchError", "map_2d_key"]

_CONV_BN = {"conv1": "conv_a", "conv2": "conv_b", "conv3": "conv_c",
            "bn1": "norm_a", "bn2": "norm_b", "bn3": "norm_c"}


class InflationError(CheckpointError, ValueError):
    """The 2D checkpoint does not fit the 3D model (missing key or shape mismatch)."""


class CheckpointMismatchError(InflationError):
    """The checkpoint does not hold the weights of the model of this config (or computes another
    function with them)."""


@dataclass
class InflationReport:
    mapped: List[Tuple[str, str]] = field(default_factory=list)  # (2D key, 3D key)
    inflated: List[str] = field(default_factory=list)  # 3D conv keys with time extent > 1 (repeated / kt)
    new_in_3d: List[str] = field(default_factory=list)  # 3D keys with no 2D source (head, context blocks)
    unused_2d: List[str] = field(default_factory=list)  # 2D keys not used (classifier, ...)

    def summary(self) -> str:
        lines = [f"inflation: {len(self.mapped)} keys mapped ({len(self.inflated)} conv kernels inflated "
                 f"over time), {len(self.new_in_3d)} keys new in 3D, {len(self.unused_2d)} 2D keys unused"]
        if self.new_in_3d:
            lines.append("  new in 3D (keep their initialisation): " + _compact(self.new_in_3d))
        if self.unused_2d:
            lines.append("  2D keys unused: " + _compact(self.unused_2d))
        return "\n".join(lines)


def _compact(keys: List[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def map_2d_key(key: str) -> Optional[str]:
    """torchvision/timm ResNet key -> gcvideo 3D key (None if it has no 3D place)."""
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
    if m:
        return f"blocks.0.{'conv' if m.group(1) == 'conv1' else 'norm'}.{m.group(2)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv[123]|bn[123])\.(\w+)", key)
    if m:
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.branch2.{_CONV_BN[m.group(3)]}.{m.group(4)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", key)
    if m:
        part = "branch1_conv" if m.group(3) == "0" else "branch1_norm"
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.{part}.{m.group(4)}"
    return None


def _is_new_module_key(key: str, model: nn.Module) -> bool:
    """Keys that a 2D ResNet cannot provide: the head and context blocks."""
    head = f"blocks.{len(model.blocks) - 1}."
    return key.startswith(head) or ".context." in key or key.startswith("context.")


def inflate_state_dict(state_dict_2d: Mapping, model: nn.Module,
                       report: Optional[InflationReport] = None) -> Dict[str, torch.Tensor]:
    """Return a full state dict for ``model`` built from a 2D ResNet state dict.

    2D conv kernels (O, I, kh, kw) become (O, I, kt, kh, kw): repeated over kt and
    divided by kt. BN weights/statistics are copied. Keys of the head and of
    context blocks keep the model's current values. A backbone key missing from
    the 2D dict, or a shape that does not fit, raises InflationError naming it.
    """
    sd2 = unwrap_state_dict(state_dict_2d)
    rep = report if report is not None else InflationReport()
    target = model.state_dict()
    sources = {}
    extra_blocks = []
    for k2 in sd2:
        k3 = map_2d_key(k2)
        if k3 is not None and k3 in target:
            sources[k3] = k2
        else:
            rep.unused_2d.append(k2)
            if k3 is not None and k2.endswith(".weight"):  # a backbone layer the 3D model does not have
                extra_blocks.append(k2)
    if extra_blocks:
        raise InflationError(
            f"2D checkpoint has {len(extra_blocks)} backbone weights with no place in the 3D model, e.g. "
            f"{', '.join(extra_blocks[:3])}: a deeper ResNet than the config's (MODEL.DEPTH / "
            "MODEL.STAGE_DEPTHS)? Inflating it would keep only its first blocks")
    out: Dict[str, torch.Tensor] = {}
    for k3, v3 in target.items():
        if k3 not in sources:
            if _is_new_module_key(k3, model):
                rep.new_in_3d.append(k3)
                out[k3] = v3
                continue
            raise InflationError(f"2D checkpoint has no weights for backbone key {k3} "
                                 f"(shape {tuple(v3.shape)}); is it a ResNet of the same depth and width?")
        k2 = sources[k3]
        v2 = sd2[k2]
        if v3.dim() == 5 and v2.dim() == 4:
            if v2.shape[:2] != v3.shape[:2] or v2.shape[2:] != v3.shape[3:]:
                raise InflationError(f"shape mismatch for {k2} -> {k3}: 2D {tuple(v2.shape)} does not "
                                     f"inflate to 3D {tuple(v3.shape)}")
            kt = v3.shape[2]
            v = v2.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt  # (O, I, kt, kh, kw)
            if kt > 1:
                rep.inflated.append(k3)
        else:
            if v2.shape != v3.shape:
                raise InflationError(f"shape mismatch for {k2} -> {k3}: 2D {tuple(v2.shape)} vs 3D "
                                     f"{tuple(v3.shape)}")
            v = v2
        out[k3] = v.to(dtype=v3.dtype).clone()
        rep.mapped.append((k2, k3))
    return out
