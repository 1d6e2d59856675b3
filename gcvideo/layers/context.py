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
norm {layernorm, none} and fusion {add, mul} (the paper's ablations) is one
``ContextBlock``. Parameter names follow the original GCNet code
(conv_mask, channel_add_conv, channel_mul_conv).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ContextBlock", "attention_pool", "CONTEXT_PRESETS"]

# The named members of the family and their (pooling, transform, norm, fusion).
CONTEXT_PRESETS = {
    "gc": dict(pooling="att", transform="bottleneck", norm="layernorm", fusion="add"),
    "snl": dict(pooling="att", transform="linear", norm="none", fusion="add"),
    "se": dict(pooling="avg", transform="bottleneck", norm="none", fusion="mul"),
}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax precision: float32 for half/bfloat16/float32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _flatten_positions(x: torch.Tensor):
    """View x (N, C, T, H, W) as (N, L, C) if channels-last, else (N, C, L); no copy if possible."""
    n, c = x.shape[:2]
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return x.permute(0, 2, 3, 4, 1).reshape(n, -1, c), True  # (N, L, C), a view
    return x.reshape(n, c, -1), False  # (N, C, L)


class _AttentionPool(torch.autograd.Function):
    """context = sum_j softmax_j(w . x_j + b) x_j over all L = T*H*W positions.

    Saves only x and the (N, L) attention; the backward writes dL/dx in one
    batched matmul with inner dimension 2: dx_j = p_j * g + dl_j * w.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        xf, cl = _flatten_positions(x)
        w = weight.reshape(-1).to(xf.dtype)
        if cl:
            logits = torch.matmul(xf, w)  # (N, L)
        else:
            logits = torch.matmul(w, xf)  # (N, L)
        acc = _acc_dtype(xf.dtype)
        logits = logits.to(acc)
        if bias is not None:
            logits = logits + bias.to(acc)
        p = torch.softmax(logits, dim=1)  # (N, L), float32 (float64 for float64 input)
        pc = p.to(xf.dtype)
        if cl:
            context = torch.bmm(pc.unsqueeze(1), xf).squeeze(1)  # (N, C)
        else:
            context = torch.bmm(xf, pc.unsqueeze(2)).squeeze(2)  # (N, C)
        ctx.save_for_backward(x, weight, p)
        ctx.has_bias = bias is not None
        return context, p

    @staticmethod
    def backward(ctx, grad_context, grad_p_out):
        x, weight, p = ctx.saved_tensors
        xf, cl = _flatten_positions(x)
        dt = xf.dtype
        g = grad_context.to(dt)  # (N, C)
        # d context / d p_j = x_j . g
        if cl:
            gp = torch.bmm(xf, g.unsqueeze(2)).squeeze(2).to(p.dtype)  # (N, L)
        else:
            gp = torch.bmm(g.unsqueeze(1), xf).squeeze(1).to(p.dtype)  # (N, L)
        if grad_p_out is not None:
            gp = gp + grad_p_out.to(p.dtype)
        # softmax backward: dl = p * (gp - sum_j p_j gp_j)
        gl = p * (gp - (p * gp).sum(dim=1, keepdim=True))  # (N, L)
        w = weight.reshape(-1).to(dt)
        n, c = g.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            a = torch.stack([p.to(dt), gl.to(dt)], dim=2 if cl else 1)  # (N, L, 2) | (N, 2, L)
            bmat = torch.stack([g, w.expand(n, c)], dim=1 if cl else 2)  # (N, 2, C) | (N, C, 2)
            if cl:
                grad_x = torch.bmm(a, bmat)  # (N, L, C)
                t, h, wd = x.shape[2:]
                grad_x = grad_x.view(n, t, h, wd, c).permute(0, 4, 1, 2, 3)  # channels-last (N, C, T, H, W)
            else:
                grad_x = torch.bmm(bmat, a).view_as(x)  # (N, C, L) -> (N, C, T, H, W)
        if ctx.needs_input_grad[1]:
            gld = gl.to(dt)
            if cl:
                gw = torch.bmm(gld.unsqueeze(1), xf).sum(0).squeeze(0)  # (C,)
            else:
                gw = torch.bmm(xf, gld.unsqueeze(2)).sum(0).squeeze(1)  # (C,)
            grad_w = gw.to(weight.dtype).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = gl.sum().reshape(1).to(weight.dtype)
        return grad_x, grad_w, grad_b


def attention_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   fused: bool = True):
    """Attention pooling over all T*H*W positions.

    x: (N, C, T, H, W); weight: the C->1 1x1x1 conv weight (1, C, 1, 1, 1); bias: (1,) or None.
    Returns (context (N, C), attention (N, T*H*W) in float32).
    """
    if fused and not torch.jit.is_tracing() and not torch.jit.is_scripting():
        return _AttentionPool.apply(x, weight, bias)
    n, c = x.shape[:2]
    logits = F.conv3d(x, weight, bias).reshape(n, -1)  # (N, L)
    p = torch.softmax(logits.to(_acc_dtype(logits.dtype)), dim=1)  # (N, L)
    context = torch.einsum("ncl,nl->nc", x.reshape(n, c, -1), p.to(x.dtype))  # (N, C)
    return context, p


class ContextBlock(nn.Module):
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
        fused: use the memory-lean attention-pooling autograd function.
    """

    def __init__(self, channels: int, ratio: float = 0.25, pooling: str = "att",
                 transform: str = "bottleneck", norm: str = "layernorm", fusion: str = "add",
                 att_bias: bool = True, zero_init: bool = True, fused: bool = True):
        super().__init__()
        if pooling not in ("att", "avg"):
            raise ValueError(f"pooling={pooling!r}: expected 'att' or 'avg'")
        if transform not in ("bottleneck", "linear"):
            raise ValueError(f"transform={transform!r}: expected 'bottleneck' or 'linear'")
        if norm not in ("layernorm", "none"):
            raise ValueError(f"norm={norm!r}: expected 'layernorm' or 'none'")
        if fusion not in ("add", "mul"):
            raise ValueError(f"fusion={fusion!r}: expected 'add' or 'mul'")
        self.channels, self.pooling, self.fusion, self.fused = channels, pooling, fusion, fused
        self.transform_kind, self.norm_kind = transform, norm
        if pooling == "att":
            self.conv_mask = nn.Conv3d(channels, 1, kernel_size=1, bias=att_bias)
        if transform == "bottleneck":
            inner = int(round(channels * ratio))
            if inner < 1 or abs(inner - channels * ratio) > 1e-6:
                raise ValueError(f"ratio={ratio} does not divide channels={channels} into whole channels")
            layers = [
                nn.Conv3d(channels, inner, kernel_size=1),
                nn.LayerNorm([inner, 1, 1, 1]) if norm == "layernorm" else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.Conv3d(inner, channels, kernel_size=1),
            ]
        else:
            layers = [nn.Conv3d(channels, channels, kernel_size=1)]
        seq = nn.Sequential(*layers)
        if fusion == "add":
            self.channel_add_conv = seq
        else:
            self.channel_mul_conv = seq
        self.reset_parameters(zero_init)

    @classmethod
    def from_preset(cls, kind: str, channels: int, **overrides) -> "ContextBlock":
        """Build 'gc', 'snl' or 'se', with any part overridden (ablations)."""
        if kind not in CONTEXT_PRESETS:
            raise ValueError(f"context block {kind!r}: expected one of {sorted(CONTEXT_PRESETS)}")
        kw = dict(CONTEXT_PRESETS[kind])
        kw.update({k: v for k, v in overrides.items() if v is not None and v != "auto"})
        return cls(channels, **kw)

    @property
    def transform(self) -> nn.Sequential:
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

    def pool(self, x: torch.Tensor):
        """Context modeling: x (N, C, T, H, W) -> (context (N, C), attention (N, T*H*W) or None)."""
        if self.pooling == "att":
            return attention_pool(x, self.conv_mask.weight, self.conv_mask.bias, fused=self.fused)
        return x.mean(dim=(2, 3, 4)), None  # (N, C)

    def term(self, x: torch.Tensor) -> torch.Tensor:
        """Context modeling + transform: the (N, C, 1, 1, 1) term that fusion applies to x."""
        context, _ = self.pool(x)
        n, c = context.shape
        t = self.transform(context.to(x.dtype).view(n, c, 1, 1, 1))  # (N, C, 1, 1, 1)
        return torch.sigmoid(t) if self.fusion == "mul" else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.term(x)
        return x * t if self.fusion == "mul" else x + t

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights over positions, (N, T, H, W) (softmax over all T*H*W)."""
        if self.pooling != "att":
            raise RuntimeError("this block uses average pooling: its weights are uniform")
        _, p = attention_pool(x, self.conv_mask.weight, self.conv_mask.bias, fused=False)
        return p.view(x.shape[0], *x.shape[2:])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, pooling={self.pooling}, transform={self.transform_kind}, "
                f"norm={self.norm_kind}, fusion={self.fusion}")
