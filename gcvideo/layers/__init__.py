"""Building blocks: the global-context family and the non-local block."""
from typing import Optional

import torch.nn as nn

from gcvideo.layers.context import (CONTEXT_PRESETS, FUSIONS, NORMS, POOLINGS, TRANSFORMS, VARIANTS, ChannelLayerNorm,
                                    ContextBlock, attention_pool, layernorm_as_vectors)
from gcvideo.layers.nonlocal_block import NL_INSTANTIATIONS, NL_POOL_POSITIONS, NonLocalBlock

__all__ = ["ContextBlock", "ChannelLayerNorm", "layernorm_as_vectors", "NonLocalBlock", "attention_pool", "create_context_block",
           "CONTEXT_PRESETS", "NL_INSTANTIATIONS", "NL_POOL_POSITIONS", "CONTEXT_TYPES", "POOLINGS", "TRANSFORMS",
           "NORMS", "FUSIONS", "VARIANTS"]

CONTEXT_TYPES = ("gc", "snl", "se", "nl")  # the kinds create_context_block builds


def create_context_block(kind: Optional[str], channels: int, *, ratio: float = 0.25,
                         pooling: str = "auto", transform: str = "auto", norm: str = "auto",
                         fusion: str = "auto", att_bias: bool = True, zero_init: bool = True,
                         fused: bool = True, nl_instantiation: str = "embedded_gaussian",
                         nl_inner_ratio: float = 0.5, nl_pool=(1, 2, 2), nl_pool_position: str = "after_conv",
                         nl_scale: bool = False,
                         bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> Optional[nn.Module]:
    """One context block chosen by a string: 'gc' | 'snl' | 'se' | 'nl' | None/'none'."""
    if kind is None or kind == "none":
        return None
    if kind == "nl":
        return NonLocalBlock(channels, inner_channels=int(round(channels * nl_inner_ratio)),
                             instantiation=nl_instantiation, pool=tuple(nl_pool) if nl_pool else None,
                             pool_position=nl_pool_position,
                             scale=nl_scale, zero_init=zero_init, bn_eps=bn_eps, bn_momentum=bn_momentum)
    if kind in CONTEXT_PRESETS:
        return ContextBlock.from_preset(kind, channels, ratio=ratio, pooling=pooling, transform=transform,
                                        norm=norm, fusion=fusion, att_bias=att_bias, zero_init=zero_init,
                                        fused=fused)
    raise ValueError(f"context block type {kind!r}: expected one of {CONTEXT_TYPES} or None")
