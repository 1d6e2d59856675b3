"""The private torch APIs gcvideo still needs, each behind one small function.

Each has no public API doing the same job in torch 2.x (said in its docstring, with what was
measured); nothing else in gcvideo calls them. tests/utils/test_torch_private.py holds each one to
its behaviour, so a torch release that removes or changes one fails there, loudly, rather than
making gcvideo silently wrong (a missing name raises AttributeError/ImportError at the call).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules import module as _module
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["dispatch_mode_active", "forward_hooks_registered", "add_relu_", "end_loader_workers", "BatchNormBase"]

# torch's base class of every batch norm (BatchNorm1d/2d/3d, SyncBatchNorm; gcvideo's CPUSyncBatchNorm
# derives from it): no public name. Precise BN finds the layers with running statistics by it, and
# SyncBN conversion builds on it.
BatchNormBase = nn.modules.batchnorm._BatchNorm


def dispatch_mode_active() -> bool:
    """True while a TorchDispatchMode is active (FakeTensorMode, make_fx/proxy tracing, a user's
    recording mode): then the fused GC path must step aside, since its C kernels would bypass the mode.

    No public API: ``torch.compiler.is_compiling``/``is_exporting`` do not see a mode entered by hand,
    and a FakeTensor input is caught by the caller, but a mode over plain tensors is not.
    """
    return _get_current_dispatch_mode() is not None


def forward_hooks_registered(module: nn.Module) -> bool:
    """True if forward (pre-)hooks would run when ``module`` is called: its own, or global ones
    (``torch.nn.modules.module.register_module_forward_hook`` / ``..._pre_hook``).

    torch has public functions to register hooks, none to ask whether any are registered; the
    registries are the private dicts read here.
    """
    return bool(module._forward_hooks or module._forward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks)


def add_relu_(out: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """out = relu(out + term) in place, ``term`` broadcast, in one pass (``torch._add_relu_``).
    CPU float32/float64 only (the caller checks: ``fused.functions._has_add_relu_kernel``).

    No public fused add + ReLU: ``torch.relu_(out.add_(term))`` gives the same bits in two passes,
    1.2x-3x slower (2-core AMD EPYC Zen 3, AVX2, shared: 14 vs 31 ms on a (8, 256, 8, 28, 28)
    float32 map; bench/results/context.md).
    """
    return torch._add_relu_(out, term)


def end_loader_workers(loader: torch.utils.data.DataLoader) -> None:
    """End the worker processes of ``loader``'s persistent iterator now (and wait for them).

    DataLoader has no public close: its iterator ends its workers when it is garbage collected,
    which a reference held elsewhere (a loop variable, a traceback) can put off past the point
    where they must be gone (before the final test forks its own). A persistent iterator without
    the private ``_shutdown_workers`` raises AttributeError, never leaves the workers silently.
    """
    it = loader._iterator if loader.persistent_workers else None
    if it is not None and loader.num_workers > 0:
        it._shutdown_workers()
