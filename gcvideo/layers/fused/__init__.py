"""Speed-only code of the GC block, behind one call: ``context_block(block, x, shortcut=None)``.

``ContextBlock`` (gcvideo/layers/context.py) is the reference: the paper's steps in plain torch
ops. Its ``forward`` and ``residual`` first ask ``context_block`` for their output; it returns
the same result computed by the fused autograd Functions (``functions.py``: fewer passes over
the map, less saved memory) and, on float32 CPU maps, by the C kernels (``kernels.py``,
``_gc_kernels.c``), or None, and the block then runs its reference ops. None where:

- the block has ``fused = False`` (``CONTEXT.FUSED False``), or fusion and pooling leave nothing
  to fuse (average pooling with mul fusion, the SE block);
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
from torch.utils._python_dispatch import _get_current_dispatch_mode

from gcvideo.layers.fused import functions

__all__ = ["context_block", "applies", "attention_pool"]


def _plain_cpu(t: Optional[torch.Tensor]) -> bool:
    return t is None or (type(t) is torch.Tensor and t.device.type == "cpu")


def applies(block, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> bool:
    """True where ``context_block`` computes the block's output (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if not getattr(block, "fused", False) or (block.fusion == "mul" and block.pooling == "avg"):
        return False
    if not (_plain_cpu(x) and _plain_cpu(shortcut)) or x.dim() != 5:
        return False
    return _get_current_dispatch_mode() is None


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
