"""Building blocks: the global-context family and the non-local block."""
from gcvideo.layers.context import (CONTEXT_PRESETS, FUSIONS, NORMS, POOLINGS, TRANSFORMS, VARIANTS, ChannelLayerNorm,
                                    ContextBlock, attention_pool, layernorm_as_vectors)
from gcvideo.layers.nonlocal_block import NL_INSTANTIATIONS, NL_POOL_POSITIONS, NonLocalBlock
from gcvideo.layers.residual import CONTEXT_POSITIONS
from gcvideo.layers.spec import CONTEXT_TYPES, ContextSpec, NonLocalSpec, create_context_block

__all__ = ["ContextBlock", "ChannelLayerNorm", "layernorm_as_vectors", "NonLocalBlock", "attention_pool", "create_context_block",
           "ContextSpec", "NonLocalSpec",
           "CONTEXT_PRESETS", "NL_INSTANTIATIONS", "NL_POOL_POSITIONS", "CONTEXT_TYPES", "POOLINGS", "TRANSFORMS",
           "NORMS", "FUSIONS", "VARIANTS", "CONTEXT_POSITIONS"]
