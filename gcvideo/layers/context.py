"""The global-context block family on 5-D video features (N, C, T, H, W).

Reference: Y. Cao, J. Xu, S. Lin, F. Wei, H. Hu, "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond" (ICCVW 2019) and "Global Context
Networks" (TPAMI 2020). The paper's framework is
    z_i = F(x_i, delta(sum_j alpha_j x_j))
context modeling (alpha: attention or average pooling over all T*H*W positions)
-> transform delta -> fusion F (broadcast add or channel-wise scaling).

- GC  (Eq. 5): alpha = softmax(W_k x), delta = W_v2 ReLU(LN(W_v1 .)), F = add.
- SNL (Eq. 3): alpha = softmax(W_k x), delta = W_v (one C->C conv),  F = add.
- SE:          average pooling, delta = W2 ReLU(W1 .), F = x * sigmoid(.).
Every combination of pooling {att, avg}, transform {bottleneck, linear},
norm {layernorm, none} (bottleneck only) and fusion {add, mul} (the paper's
ablations) is one ``ContextBlock``: ``VARIANTS`` lists them. Parameter names follow the original GCNet code
(conv_mask, channel_add_conv, channel_mul_conv).

This module is the reference, in plain torch ops. A faster path with the same numbers
(fused autograd Functions, C kernels on CPUs) lives in ``gcvideo.layers.fused`` behind
one call, ``fused.context_block``, which returns None wherever the reference must run.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from gcvideo.layers import fused
from gcvideo.layers.residual import ResidualContext
from gcvideo.utils.torch_private import forward_hooks_registered

__all__ = ["ContextBlock", "ChannelLayerNorm", "layernorm_as_vectors", "attention_pool", "CONTEXT_PRESETS", "POOLINGS", "TRANSFORMS",
           "NORMS", "FUSIONS", "VARIANTS"]

POOLINGS = ("att", "avg")  # context modeling: softmax attention / global average pooling
TRANSFORMS = ("bottleneck", "linear")  # C -> Cr -> C, or one C -> C conv
NORMS = ("layernorm", "none")  # inside the bottleneck transform
FUSIONS = ("add", "mul")  # broadcast add / x * sigmoid(.)
# Every (pooling, transform, norm, fusion) a ContextBlock computes (the norm sits inside the bottleneck).
VARIANTS = tuple(v for v in itertools.product(POOLINGS, TRANSFORMS, NORMS, FUSIONS)
                 if not (v[1] == "linear" and v[2] != "none"))

# The named members of the family and their (pooling, transform, norm, fusion).
CONTEXT_PRESETS = {
    "gc": dict(pooling="att", transform="bottleneck", norm="layernorm", fusion="add"),
    "snl": dict(pooling="att", transform="linear", norm="none", fusion="add"),
    "se": dict(pooling="avg", transform="bottleneck", norm="none", fusion="mul"),
}


def preset_parts(kind: str, **overrides) -> dict:
    """The parts of preset ``kind`` (``CONTEXT_PRESETS``) with ``overrides`` applied; an override
    None or "auto" keeps the preset's value."""
    if kind not in CONTEXT_PRESETS:
        raise ValueError(f"context block {kind!r}: expected one of {sorted(CONTEXT_PRESETS)}")
    kw = dict(CONTEXT_PRESETS[kind])
    kw.update({k: v for k, v in overrides.items() if v is not None and v != "auto"})
    return kw


def attention_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """sum_j alpha_j x_j with alpha = softmax_j(W_k x_j) over all L = T*H*W positions.

    x: (N, C, T, H, W); weight: the C->1 1x1x1 conv weight (1, C, 1, 1, 1); bias: (1,) or None.
    Returns (context (N, C), attention (N, L) in float32; float64 for float64 input).
    """
    n, c = x.shape[:2]
    logits = F.conv3d(x, weight, bias).reshape(n, -1)  # (N, L): W_k x_j
    alpha = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)  # (N, L)
    context = torch.einsum("ncl,nl->nc", x.reshape(n, c, -1), alpha.to(x.dtype))  # (N, C)
    return context, alpha


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of (N, C, ...) at each position; weight and bias (C,).

    On the (N, Cr, 1, 1, 1) context this is GCNet's ``LayerNorm([Cr, 1, 1])``. State dicts with
    the weight and bias shaped (Cr, 1, 1) (GCNet's 2-D blocks) or (Cr, 1, 1, 1) (earlier gcvideo)
    load too: they are reshaped to (Cr,) on load.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.dim() - 1  # channels to the last dim and back (positive dims: ONNX's legacy exporter)
        y = F.layer_norm(x.movedim(1, last), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.movedim(last, 1)

    def as_vector(self, t: torch.Tensor) -> torch.Tensor:
        """A saved weight or bias (Cr,), (Cr, 1, 1) or (Cr, 1, 1, 1) as (Cr,); any other shape as it is."""
        if t.dim() > 1 and t.shape[0] == self.normalized_shape[0] and t[0].numel() == 1:
            return t.reshape(-1)
        return t

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias"):
            if prefix + name in state_dict:
                state_dict[prefix + name] = self.as_vector(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def layernorm_as_vectors(model: nn.Module, state_dict):
    """A shallow copy of ``state_dict`` with the weights of ``model``'s ``ChannelLayerNorm`` layers
    shaped (C,), as ``load_state_dict`` reshapes them; for loaders that compare shapes first."""
    out = dict(state_dict)
    for name, m in model.named_modules():
        if isinstance(m, ChannelLayerNorm):
            for k in (f"{name}.weight", f"{name}.bias"):
                if k in out:
                    out[k] = m.as_vector(out[k])
    return out


def _one_of(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {allowed}")


class ContextBlock(ResidualContext):
    """One member of the global-context family, chosen by its parts.

    Args:
        channels: C, the channels of the input and output.
        ratio: bottleneck ratio r of the transform (C -> C*r -> C); 1/4 on Kinetics.
        pooling: "att" (softmax attention over all T*H*W positions) or "avg".
        transform: "bottleneck" (conv C->Cr, [LayerNorm], ReLU, conv Cr->C) or
            "linear" (one C->C conv, the simplified non-local block).
        norm: "layernorm" (over the Cr channels) or "none".
        fusion: "add" (broadcast add) or "mul" (x * sigmoid(transform)).
        att_bias: bias on the C->1 attention conv.
        zero_init: zero the last conv of an add-fusion transform (block starts as identity).
        fused: allow the faster path of ``gcvideo.layers.fused`` (same numbers); False always
            runs the reference ops below.
    """

    def __init__(self, channels: int, ratio: float = 0.25, pooling: str = "att",
                 transform: str = "bottleneck", norm: str = "layernorm", fusion: str = "add",
                 att_bias: bool = True, zero_init: bool = True, fused: bool = True):
        super().__init__()
        _one_of("pooling", pooling, POOLINGS)
        _one_of("transform", transform, TRANSFORMS)
        _one_of("norm", norm, NORMS)
        _one_of("fusion", fusion, FUSIONS)
        if transform == "linear" and norm != "none":
            raise ValueError(f"norm={norm!r} with transform='linear': the norm sits inside the bottleneck "
                             "transform; use norm='none' or transform='bottleneck'")
        self.channels, self.pooling, self.fusion, self.fused = channels, pooling, fusion, fused
        self.transform_kind, self.norm_kind = transform, norm
        if pooling == "att":
            self.conv_mask = nn.Conv3d(channels, 1, kernel_size=1, bias=att_bias)  # W_k
        if transform == "bottleneck":
            inner = int(round(channels * ratio))
            if inner < 1 or abs(inner - channels * ratio) > 1e-6:
                raise ValueError(f"ratio={ratio} does not divide channels={channels} into whole channels")
            layers = [
                nn.Conv3d(channels, inner, kernel_size=1),  # W_v1
                ChannelLayerNorm(inner) if norm == "layernorm" else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.Conv3d(inner, channels, kernel_size=1),  # W_v2
            ]
        else:
            layers = [nn.Conv3d(channels, channels, kernel_size=1)]  # W_v
        if fusion == "add":
            self.channel_add_conv = nn.Sequential(*layers)
        else:
            self.channel_mul_conv = nn.Sequential(*layers)
        self.reset_parameters(zero_init)

    @classmethod
    def from_preset(cls, kind: str, channels: int, **overrides) -> "ContextBlock":
        """Build 'gc', 'snl' or 'se', with any part overridden (ablations)."""
        return cls(channels, **preset_parts(kind, **overrides))

    @property
    def transform(self) -> nn.Sequential:
        """delta: (N, C, 1, 1, 1) -> (N, C, 1, 1, 1)."""
        return self.channel_add_conv if self.fusion == "add" else self.channel_mul_conv

    def reset_parameters(self, zero_init: bool = True) -> None:
        if self.pooling == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            if self.conv_mask.bias is not None:
                nn.init.zeros_(self.conv_mask.bias)
        for m in self.transform:
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if zero_init and self.fusion == "add":
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)

    def context_modeling(self, x: torch.Tensor) -> torch.Tensor:
        """sum_j alpha_j x_j: (N, C, T, H, W) -> (N, C, 1, 1, 1)."""
        n, c = x.shape[:2]
        if self.pooling == "avg":
            return x.mean(dim=(2, 3, 4), keepdim=True)  # alpha_j = 1 / L
        context, _ = attention_pool(x, self.conv_mask.weight, self.conv_mask.bias)  # (N, C)
        return context.to(x.dtype).view(n, c, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """z = F(x, delta(context)): (N, C, T, H, W) -> (N, C, T, H, W)."""
        out = fused.context_block(self, x)  # speed only: the same numbers, or None (gcvideo/layers/fused)
        if out is not None:
            return out
        context = self.context_modeling(x)  # (N, C, 1, 1, 1)
        t = self.transform(context)  # (N, C, 1, 1, 1)
        return x + t if self.fusion == "add" else x * torch.sigmoid(t)  # broadcast over T, H, W

    def residual(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """relu(shortcut + self(x)): the block at the pre_add position of a residual unit.

        While forward hooks are registered on this block (or globally) this calls the module,
        so the hooks see its input and output; otherwise the fused path may compute it in one go.
        """
        out = None if forward_hooks_registered(self) else fused.context_block(self, x, shortcut)
        return out if out is not None else torch.relu(self(x) + shortcut)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights over positions, (N, T, H, W) (softmax over all T*H*W)."""
        if self.pooling != "att":
            raise RuntimeError("this block uses average pooling: its weights are uniform")
        _, p = attention_pool(x, self.conv_mask.weight, self.conv_mask.bias)
        return p.view(x.shape[0], *x.shape[2:])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, pooling={self.pooling}, transform={self.transform_kind}, "
                f"norm={self.norm_kind}, fusion={self.fusion}")
