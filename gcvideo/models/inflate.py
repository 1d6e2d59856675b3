"""Inflate 2D ImageNet ResNet weights into a Slow-only ResNet-3D.

Reference: J. Carreira, A. Zisserman, "Quo Vadis, Action Recognition? A New Model
and the Kinetics Dataset" (CVPR 2017), Sec. 2.4: a 2D kernel is repeated over the
3D kernel's time extent and divided by it, so a static clip gives the 2D
network's activations. BN parameters and statistics are copied; the 2D
classifier is dropped (the video head is new); context blocks keep their
initialisation.

Accepts torchvision and timm ResNet-50/101 state dicts (``conv1.weight``,
``layer3.5.bn2.running_var``, ``fc.weight``), also wrapped under ``state_dict``
or ``model`` keys and with a ``module.`` prefix, and their 2D attention blocks, which
sit where gcvideo's ``pre_add`` context blocks do (after bn3, before the residual add):

- the official GCNet layout (Y. Cao et al., "GCNet", ICCVW 2019; its mmdet ``ContextBlock``):
  ``layerX.Y.context_block.conv_mask``, ``channel_add_conv.0/1/3`` (``channel_mul_conv``) =
  gcvideo's own names under ``branch2.context``;
- timm's ``GlobalContext`` (``attn_layer='gc'``): ``se.conv_attn`` -> ``conv_mask``,
  ``se.mlp_scale|mlp_add.fc1/norm/fc2`` -> ``channel_mul_conv|channel_add_conv.0/1/3``;
- timm's ``SEModule`` (``attn_layer='se'``, ``seresnet50``): ``se.fc1/fc2`` -> ``channel_mul_conv.0/3``.

Their 1x1 convs become 1x1x1 convs and LayerNorm parameters take the model's shape (any of
(C/r, 1, 1), (C/r,) and (C/r, 1, 1, 1)); a static clip then gives the 2D blocks' outputs, since
attention pooling over T identical frames equals the 2D pooling. A 2D block whose kind differs
from the model's block at its place (pooling, fusion, norm, ratio) is an error giving the
``CONTEXT.*`` values to set. A 2D network of another layout (deep stems such as timm's
``resnet50d``/``gcresnet50t``, ByobNet models) is refused as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from gcvideo.models.weights_file import unwrap_state_dict
from gcvideo.utils.io import CheckpointMismatchError

__all__ = ["inflate_state_dict", "InflationReport", "InflationError", "map_2d_key", "check_resnet_layout"]

_CONV_BN = {"conv1": "conv_a", "conv2": "conv_b", "conv3": "conv_c",
            "bn1": "norm_a", "bn2": "norm_b", "bn3": "norm_c"}


class InflationError(CheckpointMismatchError):
    """The 2D checkpoint does not fit the 3D model (missing key, shape mismatch, another layout or
    attention block)."""


@dataclass
class InflationReport:
    mapped: List[Tuple[str, str]] = field(default_factory=list)  # (2D key, 3D key)
    inflated: List[str] = field(default_factory=list)  # 3D conv keys with time extent > 1 (repeated / kt)
    new_in_3d: List[str] = field(default_factory=list)  # 3D keys with no 2D source (head, context blocks)
    unused_2d: List[str] = field(default_factory=list)  # 2D keys not used (classifier, ...)
    context: List[str] = field(default_factory=list)  # 3D context-block keys loaded from 2D attention blocks
    reshaped: List[str] = field(default_factory=list)  # 3D keys given the model's shape (1x1 -> 1x1x1, LN)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"inflation: {len(self.mapped)} keys mapped ({len(self.inflated)} conv kernels inflated "
                 f"over time, {len(self.context)} context-block keys from 2D attention blocks), "
                 f"{len(self.new_in_3d)} keys new in 3D, {len(self.unused_2d)} 2D keys unused"]
        if self.new_in_3d:
            lines.append("  new in 3D (keep their initialisation): " + _compact(self.new_in_3d))
        if self.unused_2d:
            lines.append("  2D keys unused: " + _compact(self.unused_2d))
        if self.reshaped:
            lines.append("  reshaped to the model's shape: " + _compact(self.reshaped))
        lines += [f"  note: {n}" for n in self.notes]
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
    m = _ATTENTION_KEY.fullmatch(key)
    if m:
        part = _attention_part(m.group(3))
        if part is not None:
            return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.branch2.context.{part}"
    return None


# 2D attention blocks of a bottleneck: GCNet's ``context_block``, timm's ``se`` (GlobalContext / SEModule)
_ATTENTION_KEY = re.compile(r"layer(\d)\.(\d+)\.(context_block\..+|se\..+)")
_TIMM_MLP = {"fc1": "0", "norm": "1", "fc2": "3"}


def _attention_part(rest: str) -> Optional[str]:
    """The gcvideo ContextBlock parameter for a 2D attention-block key (after ``layerX.Y.``)."""
    m = re.fullmatch(r"context_block\.(conv_mask|channel_add_conv\.[013]|channel_mul_conv\.[013])\.(weight|bias)",
                     rest)
    if m:  # the official GCNet layout: gcvideo's own names
        return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"se\.conv_attn\.(weight|bias)", rest)
    if m:  # timm GlobalContext
        return f"conv_mask.{m.group(1)}"
    m = re.fullmatch(r"se\.mlp_(add|scale)\.(fc1|norm|fc2)\.(weight|bias)", rest)
    if m:
        seq = "channel_add_conv" if m.group(1) == "add" else "channel_mul_conv"
        return f"{seq}.{_TIMM_MLP[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"se\.(fc1|fc2)\.(weight|bias)", rest)
    if m:  # timm SEModule (its optional BN is not mapped: refused as an unknown part)
        return f"channel_mul_conv.{_TIMM_MLP[m.group(1)]}.{m.group(2)}"
    return None


@dataclass
class _BlockKind:
    """What a context block computes: gcvideo's ContextBlock parts."""
    pooling: str
    fusion: str
    norm: str
    ratio: float

    def opts(self) -> str:
        return (f"CONTEXT.POOLING {self.pooling} CONTEXT.TRANSFORM bottleneck CONTEXT.NORM {self.norm} "
                f"CONTEXT.FUSION {self.fusion} CONTEXT.RATIO {self.ratio:g}")


def _kind_2d(parts: Mapping[str, torch.Tensor]) -> Tuple[Optional[_BlockKind], str]:
    """The kind of one 2D attention block from its tensors by gcvideo part name; or (None, why)."""
    seqs = {p.split(".")[0] for p in parts if p.startswith("channel_")}
    if len(seqs) != 1:
        return None, "both add and mul fusion" if seqs else "no transform"
    seq = seqs.pop()
    first = parts.get(f"{seq}.0.weight")
    if first is None:
        return None, f"no {seq}.0.weight"
    return _BlockKind(pooling="att" if "conv_mask.weight" in parts else "avg",
                      fusion="add" if seq == "channel_add_conv" else "mul",
                      norm="layernorm" if f"{seq}.1.weight" in parts else "none",
                      ratio=first.shape[0] / first.shape[1]), ""


def _kind_3d(block: nn.Module) -> Optional[_BlockKind]:
    if not hasattr(block, "transform_kind") or block.transform_kind != "bottleneck":
        return None
    first = block.transform[0]
    return _BlockKind(pooling=block.pooling, fusion=block.fusion, norm=block.norm_kind,
                      ratio=first.out_channels / first.in_channels)


def check_resnet_layout(sd2: Mapping[str, torch.Tensor]) -> None:
    """Refuse 2D networks that are not a ResNet of the torchvision/timm kind (one 7x7 ``conv1`` stem,
    ``layer1..layer4`` of bottlenecks), naming the layout instead of a depth or width mismatch."""
    if "conv1.weight" in sd2 and sd2["conv1.weight"].dim() == 4 and any(k.startswith("layer1.") for k in sd2):
        return
    stem = [k for k in sd2 if k.startswith(("conv1.", "stem."))][:3]
    raise InflationError(
        "the 2D checkpoint's layout is not a ResNet of the torchvision/timm kind (one 7x7 conv1 stem, then "
        "layer1..layer4 of bottlenecks) that inflates into this model"
        + (f": its stem is {', '.join(stem)} (a deep or tiered stem, as timm's resnet50d / gcresnet50t, or a "
           "ByobNet model)" if stem else f"; first keys: {', '.join(list(sd2)[:5])}"))


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
    check_resnet_layout(sd2)
    rep = report if report is not None else InflationReport()
    target = model.state_dict()
    _check_attention_blocks(sd2, model, rep)
    sources = {}
    extra_blocks = []
    for k2 in sd2:
        k3 = map_2d_key(k2)
        if k3 is not None and k3 in target:
            sources[k3] = k2
        else:
            rep.unused_2d.append(k2)
            if k3 is not None and k2.endswith(".weight") and ".context." not in k3:
                extra_blocks.append(k2)  # a backbone layer the 3D model does not have
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
        elif v2.shape != v3.shape and ".context." in k3 and v2.numel() == v3.numel():
            v = v2.reshape(v3.shape)  # LayerNorm (C/r, 1, 1) / (C/r,) -> the model's parameter shape
            rep.reshaped.append(k3)
        else:
            if v2.shape != v3.shape:
                raise InflationError(f"shape mismatch for {k2} -> {k3}: 2D {tuple(v2.shape)} vs 3D "
                                     f"{tuple(v3.shape)}")
            v = v2
        out[k3] = v.to(dtype=v3.dtype).clone()
        rep.mapped.append((k2, k3))
        if ".context." in k3:
            rep.context.append(k3)
    return out


def _check_attention_blocks(sd2: Mapping[str, torch.Tensor], model: nn.Module, rep: InflationReport) -> None:
    """Each 2D attention block must match the model's context block at its place (or the model has none
    there: its weights are then unused); an error gives the CONTEXT.* values that build the 2D block."""
    parts: Dict[str, Dict[str, torch.Tensor]] = {}  # 3D block name -> {ContextBlock part: 2D tensor}
    unknown: Dict[str, List[str]] = {}
    names: Dict[str, str] = {}  # 3D block name -> 2D block name
    for k, v in sd2.items():
        m = _ATTENTION_KEY.fullmatch(k)
        if not m:
            continue
        place = f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.branch2.context"
        names[place] = f"layer{m.group(1)}.{m.group(2)}.{m.group(3).split('.')[0]}"
        part = _attention_part(m.group(3))
        if part is None:
            unknown.setdefault(place, []).append(k)
        else:
            parts.setdefault(place, {})[part] = v
    modules = dict(model.named_modules())
    timm_ln = False
    for place, name in names.items():
        kind, why = _kind_2d(parts.get(place, {}))
        if place in unknown or kind is None:
            raise InflationError(f"2D attention block {name} has parts gcvideo's context blocks do not have: "
                                 + ", ".join(unknown.get(place, []) + ([f"({why})"] if why else [])))
        timm_ln |= kind.norm == "layernorm" and name.endswith(".se")
        block = modules.get(place)
        if block is None:
            continue  # the model has no block here: the 2D keys are reported unused
        mine = _kind_3d(block)
        if mine is None or (mine.pooling, mine.fusion, mine.norm) != (kind.pooling, kind.fusion, kind.norm) or \
                abs(mine.ratio - kind.ratio) > 1e-9:
            got = mine.opts() if mine is not None else type(block).__name__
            raise InflationError(f"2D attention block {name} computes another function than the model's block "
                                 f"{place} ({got}); set {kind.opts()}")
    if timm_ln:
        rep.notes.append("timm's LayerNorm2d uses eps 1e-6, gcvideo's LayerNorm 1e-5: the GC blocks' outputs "
                         "differ by about 1e-6 relative")
