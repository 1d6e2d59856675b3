"""Speed-only code of the GC block, behind one call: ``context_block(block, x, shortcut=None)``.

``ContextBlock`` (gcvideo/layers/context.py) is the reference: the paper's steps in plain torch
ops. Its ``forward`` and ``residual`` first ask ``context_block`` for their output; it returns
the same result computed by the fused autograd Functions (``functions.py``: fewer passes over
the map, less saved memory) and, on float32 CPU maps, by the C kernels (``kernels.py``,
``_gc_kernels.c``), or None, and the block then runs its reference ops. None where:

- the block has ``fused = False`` (``CONTEXT.FUSED False``);
- its (pooling, transform, norm, fusion) is not in ``FUSED_VARIANTS`` (the combinations the fused
  Functions implement: every add-fusion block, mul fusion with attention pooling; the SE block, average
  pooling with mul fusion, leaves nothing to fuse), or its layers are not the ones those Functions
  compute (a transform with another activation, a grouped or bias-free conv, another attention conv):
  a variant added to ``ContextBlock`` later runs its reference ops until the fused path implements it;
- the input is not a plain CPU tensor (CUDA, a FakeTensor, any other tensor subclass), or a
  dispatch mode is active (FakeTensorMode, make_fx/proxy tracing, a recording mode);
- torch.jit tracing or scripting, torch.compile or torch.export is tracing the model.

So FLOP counting (a jit trace), TorchScript/ONNX/torch.export and torch.compile see the reference
ops only; the fast path exists only in eager CPU runs, where tests hold it to the reference
(tests/layers/test_context_fused.py, test_kernels.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from gcvideo.layers.fused import functions
from gcvideo.utils.torch_private import dispatch_mode_active

__all__ = ["context_block", "applies", "attention_pool", "FUSED_VARIANTS"]

# (pooling, transform, norm, fusion) of the blocks the fused Functions compute (functions.py): add fusion
# with either pooling and either transform (ContextAdd), mul fusion with attention pooling (the fused
# pooling, then the reference's transform and fusion). A linear transform has no norm.
_TRANSFORMS = (("bottleneck", "layernorm"), ("bottleneck", "none"), ("linear", "none"))
FUSED_VARIANTS = frozenset([(p, t, n, "add") for p in ("att", "avg") for t, n in _TRANSFORMS]
                           + [("att", t, n, "mul") for t, n in _TRANSFORMS])


def _plain_cpu(t: Optional[torch.Tensor]) -> bool:
    return t is None or (type(t) is torch.Tensor and t.device.type == "cpu")


def _is_pointwise_conv(m, cin: int, cout: int, bias: bool = True) -> bool:
    """An nn.Conv3d C_in -> C_out with a 1x1x1 kernel and no groups (a matrix), with a bias if ``bias``."""
    return (type(m) is nn.Conv3d and (m.in_channels, m.out_channels, m.groups) == (cin, cout, 1)
            and m.kernel_size == m.stride == m.dilation == (1, 1, 1) and m.padding == (0, 0, 0)
            and (m.bias is not None or not bias))


def _layers_fused_exactly(block) -> bool:
    """The block's layers are the ones functions.py computes: W_k a C->1 pointwise conv (bias optional)
    and the transform [conv C->Cr, LayerNorm over Cr | Identity, ReLU, conv Cr->C] or [conv C->C]."""
    c = block.channels
    if block.pooling == "att" and not _is_pointwise_conv(block.conv_mask, c, 1, bias=False):
        return False
    layers = list(block.transform)
    if block.transform_kind == "linear":
        return len(layers) == 1 and _is_pointwise_conv(layers[0], c, c)
    if len(layers) != 4 or type(layers[0]) is not nn.Conv3d:
        return False
    conv1, norm, act, conv2 = layers
    inner = conv1.out_channels
    if block.norm_kind == "layernorm":
        norm_ok = (isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (inner,)
                   and norm.weight is not None and norm.bias is not None)
    else:
        norm_ok = type(norm) is nn.Identity
    return (norm_ok and type(act) is nn.ReLU and _is_pointwise_conv(conv1, c, inner)
            and _is_pointwise_conv(conv2, inner, c))


def applies(block, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> bool:
    """True where ``context_block`` computes the block's output (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if not getattr(block, "fused", False):
        return False
    if (block.pooling, block.transform_kind, block.norm_kind, block.fusion) not in FUSED_VARIANTS:
        return False
    if not _layers_fused_exactly(block):
        return False
    if not (_plain_cpu(x) and _plain_cpu(shortcut)) or x.dim() != 5:
        return False
    return not dispatch_mode_active()


def context_block(block, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``block(x)`` (shortcut None) or ``relu(shortcut + block(x))`` by the fused path, or None to use
    the block's reference ops. x, shortcut: (N, C, T, H, W)."""
    if not applies(block, x, shortcut):
        return None
    if block.fusion == "add":  # the whole block (and the residual add + ReLU) in one Function
        return functions.context_add(block, x, shortcut, relu=shortcut is not None)
    # mul fusion with attention pooling: the fused pooling, then the reference's transform and fusion
    n, c = x.shape[:2]
    context, _ = functions.AttentionPool.apply(x, block.conv_mask.weight, block.conv_mask.bias)  # (N, C)
    z = x * torch.sigmoid(block.transform(context.to(x.dtype).view(n, c, 1, 1, 1)))  # (N, C, T, H, W)
    return z if shortcut is None else torch.relu(z + shortcut)


def attention_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """The fused attention pooling alone: (context (N, C), attention (N, T*H*W) in float32); the
    same numbers as ``gcvideo.layers.attention_pool``."""
    return functions.AttentionPool.apply(x, weight, bias)
