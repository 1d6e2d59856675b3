"""What a context block is, as one small object: ``ContextSpec`` (with its ``NonLocalSpec``).

``build_model`` reads the config's CONTEXT section (and MODEL.BN_*) into one ``ContextSpec`` once;
the backbone hands it down and ``create_context_block(spec, channels)`` builds the block at each
place. A spec checks its values when it is made: a bad value or combination raises ValueError
naming the field (``ContextSpec.norm='layernorm' ...``), before any block is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch.nn as nn

from gcvideo.layers.context import (CONTEXT_PRESETS, FUSIONS, NORMS, POOLINGS, TRANSFORMS, VARIANTS, ContextBlock,
                                    preset_parts)
from gcvideo.layers.nonlocal_block import NL_INSTANTIATIONS, NL_POOL_POSITIONS, NonLocalBlock

__all__ = ["ContextSpec", "NonLocalSpec", "create_context_block", "CONTEXT_TYPES"]

CONTEXT_TYPES = (*CONTEXT_PRESETS, "nl")  # the kinds create_context_block builds: the presets and the non-local block


def _refuse(owner: str, name: str, value, expected: str) -> None:
    raise ValueError(f"{owner}.{name}={value!r}: expected {expected}")


def _one_of(owner: str, name: str, value, allowed) -> None:
    if value not in allowed:
        _refuse(owner, name, value, f"one of {tuple(allowed)}")


def _ratio(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        _refuse(owner, name, value, "a ratio in (0, 1]")


@dataclass(frozen=True)
class NonLocalSpec:
    """The non-local block's settings (``NonLocalBlock``; config CONTEXT.NL_*, MODEL.BN_*).

    instantiation: gaussian | embedded_gaussian | dot_product | concat; inner_ratio: theta/phi/g
    channels over C; pool: the key/value max-pool kernel (T, H, W), None or () for none;
    pool_position: after_conv | before_conv; scale: embedded_gaussian logits / sqrt(inner);
    bn_eps, bn_momentum: the BatchNorm after W_z.
    """

    instantiation: str = "embedded_gaussian"
    inner_ratio: float = 0.5
    pool: Optional[Tuple[int, ...]] = (1, 2, 2)
    pool_position: str = "after_conv"
    scale: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self):
        _one_of("NonLocalSpec", "instantiation", self.instantiation, NL_INSTANTIATIONS)
        _ratio("NonLocalSpec", "inner_ratio", self.inner_ratio)
        pool = tuple(self.pool) if self.pool else None
        if pool is not None and (len(pool) != 3 or not all(isinstance(k, int) and k >= 1 for k in pool)):
            _refuse("NonLocalSpec", "pool", self.pool, "None or 3 positive integers (T, H, W), e.g. (1, 2, 2)")
        object.__setattr__(self, "pool", pool)
        _one_of("NonLocalSpec", "pool_position", self.pool_position, NL_POOL_POSITIONS)


@dataclass(frozen=True)
class ContextSpec:
    """One context block, whatever its place: the kind and its parts (config CONTEXT.*).

    kind: gc | snl | se | nl | none (None is read as none). pooling, transform, norm, fusion: the
    parts of a gc/snl/se block, "auto" = the kind's preset (``CONTEXT_PRESETS``); ratio: its
    bottleneck ratio; att_bias: bias on the attention conv; zero_init: the block starts as the
    identity; fused: allow ``gcvideo.layers.fused`` (same numbers). nl: the non-local block's settings.
    """

    kind: Optional[str] = "gc"
    ratio: float = 0.25
    pooling: str = "auto"
    transform: str = "auto"
    norm: str = "auto"
    fusion: str = "auto"
    att_bias: bool = True
    zero_init: bool = True
    fused: bool = True
    nl: NonLocalSpec = field(default_factory=NonLocalSpec)

    def __post_init__(self):
        if self.kind is None:
            object.__setattr__(self, "kind", "none")
        _one_of("ContextSpec", "kind", self.kind, ("none", *CONTEXT_PRESETS, "nl"))  # a preset added later too
        for name, allowed in (("pooling", POOLINGS), ("transform", TRANSFORMS), ("norm", NORMS), ("fusion", FUSIONS)):
            _one_of("ContextSpec", name, getattr(self, name), ("auto", *allowed))
        _ratio("ContextSpec", "ratio", self.ratio)
        if not isinstance(self.nl, NonLocalSpec):
            _refuse("ContextSpec", "nl", self.nl, "a NonLocalSpec")
        if self.kind in CONTEXT_PRESETS and self.parts() not in VARIANTS:
            pooling, transform, norm, fusion = self.parts()
            _refuse("ContextSpec", "norm", self.norm, f"'none' (or 'auto') with transform {transform!r}: "
                    "the norm sits inside the bottleneck transform")

    def parts(self) -> Tuple[str, str, str, str]:
        """(pooling, transform, norm, fusion) of a gc/snl/se block, "auto" resolved by its preset."""
        p = preset_parts(self.kind, pooling=self.pooling, transform=self.transform, norm=self.norm, fusion=self.fusion)
        return p["pooling"], p["transform"], p["norm"], p["fusion"]

    def replace(self, **changes) -> "ContextSpec":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def create_context_block(spec: ContextSpec, channels: int) -> Optional[nn.Module]:
    """The block ``spec`` describes for ``channels`` C, or None for kind none."""
    if not isinstance(spec, ContextSpec):
        raise TypeError(f"create_context_block(spec, channels): spec is a {type(spec).__name__}, expected a "
                        "ContextSpec, e.g. ContextSpec('gc', ratio=0.25)")
    if spec.kind == "none":
        return None
    if spec.kind == "nl":
        nl = spec.nl
        return NonLocalBlock(channels, inner_channels=int(round(channels * nl.inner_ratio)),
                             instantiation=nl.instantiation, pool=nl.pool, pool_position=nl.pool_position,
                             scale=nl.scale, zero_init=spec.zero_init, bn_eps=nl.bn_eps, bn_momentum=nl.bn_momentum)
    pooling, transform, norm, fusion = spec.parts()
    return ContextBlock(channels, ratio=spec.ratio, pooling=pooling, transform=transform, norm=norm, fusion=fusion,
                        att_bias=spec.att_bias, zero_init=spec.zero_init, fused=spec.fused)
