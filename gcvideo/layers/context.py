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
from torch.autograd.function import once_differentiable

from gcvideo.layers import kernels as _k

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


def _has_add_relu_kernel(t: torch.Tensor) -> bool:
    """``torch._add_relu_`` (one pass for relu(a + b)) has CPU float32/float64 kernels only."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _flatten_positions(x: torch.Tensor):
    """View x (N, C, T, H, W) as (N, L, C) if channels-last, else (N, C, L); no copy if possible."""
    n, c = x.shape[:2]
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return x.permute(0, 2, 3, 4, 1).reshape(n, -1, c), True  # (N, L, C), a view
    return x.reshape(n, c, -1), False  # (N, C, L)


def _sum_channels(xf: torch.Tensor, cl: bool, u: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_c u[n, c] x[n, c, l] -> (N, L); u: (N, C) or (C,). One matrix-vector product per clip.

    ``torch.mv`` on the (transposed) 2-D view reads x once in any layout and dtype; batched
    matmuls of the same shapes hit slow kernels for some layouts (bf16 on AVX2 CPUs) or copy.
    A channels-last CPU map (``x``, 5-D, given) goes through a C->1 1x1x1 convolution instead:
    oneDNN reads it ~1.7x faster than torch.mv reads its (L, C) view (bench_context.py --gemv).
    """
    u = u.to(xf.dtype)
    if x is not None and cl and x.device.type == "cpu":
        n, c = x.shape[:2]
        if u.dim() == 1:
            return F.conv3d(x, u.view(1, c, 1, 1, 1)).reshape(n, -1)  # (N, L)
        return torch.cat([F.conv3d(x[i:i + 1], u[i].view(1, c, 1, 1, 1)) for i in range(n)]).reshape(n, -1)
    rows = [torch.mv(xf[i] if cl else xf[i].t(), u[i] if u.dim() == 2 else u) for i in range(xf.shape[0])]
    return torch.stack(rows)  # (N, L)


def _sum_positions(xf: torch.Tensor, cl: bool, v: torch.Tensor) -> torch.Tensor:
    """sum_l v[n, l] x[n, c, l] -> (N, C); v: (N, L). One matrix-vector product per clip."""
    v = v.to(xf.dtype)
    return torch.stack([torch.mv(xf[i].t() if cl else xf[i], v[i]) for i in range(xf.shape[0])])  # (N, C)


def _pool_forward(xf: torch.Tensor, cl: bool, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  x: Optional[torch.Tensor] = None):
    """Attention pooling on flattened x: (context (N, C) in x's dtype, p (N, L) in the softmax dtype).

    Two matrix-vector passes over x (logits, weighted sum); the softmax is over the small (N, L).
    """
    if x is not None and weight.dtype == torch.float32:
        lay = _k.usable(x)
        if lay is not None:  # one fused pass over x (online softmax), see _gc_kernels.c
            n, c = x.shape[:2]
            context, p = x.new_empty(n, c), x.new_empty(n, xf.shape[2 - cl])  # (N, C), (N, L)
            b = float(bias.detach()) if bias is not None else 0.0
            w = weight.detach().reshape(-1).contiguous()
            _k.cpu_kernels().gc_pool_forward(x.data_ptr(), w.data_ptr(), b, n, c, p.shape[1], lay,
                                             torch.get_num_threads(), context.data_ptr(), p.data_ptr())
            return context, p
    acc = _acc_dtype(xf.dtype)
    logits = _sum_channels(xf, cl, weight.reshape(-1), x).to(acc)  # (N, L)
    if bias is not None:
        logits = logits + bias.to(acc)
    p = torch.softmax(logits, dim=1)  # (N, L), float32 (float64 for float64 input)
    return _sum_positions(xf, cl, p), p  # (N, C), (N, L)


def _pool_backward(xf: torch.Tensor, cl: bool, p: torch.Tensor, g_ctx: torch.Tensor,
                   g_p: Optional[torch.Tensor] = None, x: Optional[torch.Tensor] = None):
    """Backward of attention pooling up to the logits.

    g_ctx: dL/dcontext (N, C). Returns gl = dL/dlogits (N, L) in p's dtype and
    gw = dL/dw = sum_j gl_j x_j summed over the batch, (C,) in p's dtype. One pass over x each.
    """
    gp = _sum_channels(xf, cl, g_ctx, x).to(p.dtype)  # (N, L): x_j . g_ctx
    if g_p is not None:
        gp = gp + g_p.to(p.dtype)
    gl = p * (gp - (p * gp).sum(dim=1, keepdim=True))  # softmax backward, (N, L)
    gw = _sum_positions(xf, cl, gl).sum(0)  # (C,)
    return gl, gw.to(p.dtype)


def _pool_backward_kernel(y: torch.Tensor, lay: int, g: Optional[torch.Tensor], p: torch.Tensor,
                          context: torch.Tensor, g_ctx: torch.Tensor, weight: torch.Tensor, need_grad_y: bool):
    """The fused kernel of the pooling backward: (grad_y = g + p g_ctx + gl w or None, gw (C,), gb (1,)).

    One pass over y (and g), float32 CPU maps in layout ``lay``; g None means 0 (pooling alone).
    The one-pass form's correction for its early softmax-backward sum is inside the kernel
    (``gc_pool_backward`` in _gc_kernels.c)."""
    n, c = y.shape[:2]
    g_ctx = g_ctx.detach().float().contiguous()  # (N, C)
    context = context.detach().float().contiguous()  # (N, C)
    grad_y = torch.empty_like(y) if need_grad_y else None  # y's layout
    gw, gb = y.new_empty(c), y.new_empty(1)
    w = weight.detach().reshape(-1).contiguous()
    _k.cpu_kernels().gc_pool_backward(
        y.data_ptr(), _k.ptr(g), p.data_ptr(), g_ctx.data_ptr(), context.data_ptr(), w.data_ptr(), n, c,
        p.shape[1], lay, torch.get_num_threads(), _k.ptr(grad_y), gw.data_ptr(), gb.data_ptr())
    return grad_y, gw, gb


def _add_rank2(g: Optional[torch.Tensor], u1: torch.Tensor, v1: torch.Tensor, u2: torch.Tensor,
               v2: torch.Tensor, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """g + u1 (x) v1 + u2 (x) v2, u over channels (N, C), v over positions (N, L).

    g: (N, C, T, H, W) in either memory format, or None (then just the rank-2 term, shaped,
    laid out and typed like ``like``). Two broadcasting addcmul passes in g's layout; on the
    CPU this beats a batched matmul with inner dimension 2 (baddbmm), which copies g first.
    """
    ref = g if g is not None else like
    n, c, t, h, w = ref.shape
    dt = ref.dtype
    a1, a2 = u1.to(dt).view(n, c, 1, 1, 1), u2.to(dt).view(n, c, 1, 1, 1)
    b1, b2 = v1.to(dt).view(n, 1, t, h, w), v2.to(dt).view(n, 1, t, h, w)
    if g is None:
        out = torch.mul(a1, b1, out=torch.empty_like(ref))  # (N, C, T, H, W), ref's layout
    else:
        out = torch.addcmul(g, a1, b1)  # (N, C, T, H, W), g's layout
    return out.addcmul_(a2, b2)


class _AttentionPool(torch.autograd.Function):
    """context = sum_j softmax_j(w . x_j + b) x_j over all L = T*H*W positions.

    Saves only x and the (N, L) attention; the backward writes dL/dx in one
    batched matmul with inner dimension 2: dx_j = p_j * g + dl_j * w.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        xf, cl = _flatten_positions(x)
        context, p = _pool_forward(xf, cl, weight, bias, x)
        ctx.save_for_backward(x, weight, p, context)
        ctx.has_bias = bias is not None
        return context, p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_context, grad_p_out):
        x, weight, p, context = ctx.saved_tensors
        lay = _k.usable(x) if weight.dtype == torch.float32 and p.dtype == torch.float32 else None
        if lay is not None and (grad_p_out is None or not grad_p_out.any()):
            grad_x, gw, gb = _pool_backward_kernel(x, lay, None, p, context, grad_context, weight,
                                                   ctx.needs_input_grad[0])
            return (grad_x, gw.view_as(weight) if ctx.needs_input_grad[1] else None,
                    gb if ctx.has_bias and ctx.needs_input_grad[2] else None)
        xf, cl = _flatten_positions(x)
        gl, gw = _pool_backward(xf, cl, p, grad_context, grad_p_out, x)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # (N, C, T, H, W): dx_j = p_j g + gl_j w
            w = weight.reshape(1, -1).expand_as(grad_context)
            grad_x = _add_rank2(None, grad_context, p, w, gl, like=x)
        if ctx.needs_input_grad[1]:
            grad_w = gw.to(weight.dtype).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = gl.sum().reshape(1).to(weight.dtype)
        return grad_x, grad_w, grad_b


class _ContextAdd(torch.autograd.Function):
    """z = act(y + delta(pool(y)) [+ shortcut]): a whole add-fusion context block in one Function.

    Used by ``ContextBlock`` (fused=True, add fusion) on its own (no shortcut, no ReLU)
    and by the residual block for the pre_add position, where the broadcast add of the
    (N, C, 1, 1, 1) term is merged into the residual add + ReLU
    (relu(y + shortcut + term), one in-place add-ReLU pass instead of a separate add).

    The transform delta (a few ops on (N, C)) runs without autograd in forward and is
    differentiated by hand in backward (``ContextBlock._transform_saved/_transform_grad``). In backward
    dL/dy = g + (attention-pooling part) is written in one pass (``_add_rank2``), so
    autograd never has to add the gradients of the identity path and of the pooling path.
    On float32 CPU maps of one layout the passes over the map run in the C kernels of
    ``_gc_kernels.c`` (``kernels.py``): the pooling in one pass (online softmax),
    relu(y + shortcut + term) in one pass, ReLU mask + sum over positions in one pass, and the
    pooling backward with dL/dy in one pass (three passes in all instead of seven). For a
    bottleneck GC block at the pre-add position (att pooling, shortcut, ReLU, batch <= 8) each
    direction is one C call (``gc_block_forward``/``gc_block_backward``): no torch ops between
    the kernels. Math: that of ``ContextBlock`` with fused=False (the reference path), to rounding.
    First-order gradients only.
    """

    @staticmethod
    def forward(ctx, y, shortcut, weight, bias, block, relu, *params):
        fast = block._block_kernel_forward(y, shortcut, weight, bias) if relu and shortcut is not None else None
        if fast is not None:  # the whole block in one C call (_gc_kernels.c: gc_block_forward)
            out, context, p, saved = fast
            saved, t_dtype = ("kernel", saved), torch.float32
        else:
            out, context, p, saved, t_dtype = _ContextAdd._forward_steps(y, shortcut, weight, bias, block, relu)
        ctx.transform = (block, saved, t_dtype)
        ctx.relu, ctx.att, ctx.has_bias = relu, block.pooling == "att", bias is not None
        ctx.has_shortcut = shortcut is not None
        ctx.save_for_backward(y, weight, p, out if relu else None, context if p is not None else None)
        return out

    @staticmethod
    def _forward_steps(y, shortcut, weight, bias, block, relu):
        """The forward as separate steps (kernels or torch ops): (out, context, p, transform's saved, its dtype)."""
        n, c = y.shape[:2]
        yf, cl = _flatten_positions(y)
        if block.pooling == "att":
            context, p = _pool_forward(yf, cl, weight, bias, y)  # (N, C), (N, L)
        else:
            context, p = y.mean(dim=(2, 3, 4)), None  # (N, C)
        # The transform on (N, C) runs in its weights' dtype (float32) even under autocast: it is
        # tiny, and bf16 weight casts and bf16 GEMMs with one row are slow on CPUs without bf16 units.
        with torch.autocast(y.device.type, enabled=False):
            t, saved = block._transform_saved(context.detach().to(block.transform[0].weight.dtype))  # (N, C)
        term = t.to(y.dtype).view(n, c, 1, 1, 1)
        lay = _k.usable(y, shortcut) if shortcut is not None and relu else None
        if lay is not None:  # relu(y + shortcut + term) in one pass (_gc_kernels.c)
            out = torch.empty_like(y)
            _k.cpu_kernels().gc_add_relu(y.data_ptr(), shortcut.data_ptr(), term.contiguous().data_ptr(),
                                         out.data_ptr(), n, c, y[0, 0].numel(), lay, torch.get_num_threads())
        elif shortcut is not None:
            out = torch.add(y, shortcut)  # (N, C, T, H, W)
            if relu and _has_add_relu_kernel(out):
                out = torch._add_relu_(out, term)  # one pass: out = relu(out + term)
            else:  # add-relu has CPU float kernels only (no CUDA, no half/bfloat16)
                out = out.add_(term).relu_() if relu else out.add_(term)
        else:
            out = torch.add(y, term)
            if relu:
                out = out.relu_()
        return out, context, p, saved, t.dtype

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        y, weight, p, out, context = ctx.saved_tensors
        block, saved, t_dtype = ctx.transform  # small (N, C) tensors: backward can run again (retain_graph)
        n, c = y.shape[:2]
        if isinstance(saved, tuple) and ctx.relu and ctx.has_shortcut and ctx.att:
            fast = block._block_kernel_backward(grad_out, out, y, p, weight, saved[1])
            if fast is not None:  # one C call (gc_block_backward)
                g, grad_y, g_params, gw, gb = fast
                return (grad_y if ctx.needs_input_grad[0] else None, g if ctx.needs_input_grad[1] else None,
                        gw.view_as(weight) if ctx.needs_input_grad[2] else None,
                        gb if ctx.has_bias and ctx.needs_input_grad[3] else None, None, None, *g_params)
        # fused CPU kernels (float32, one layout for all maps): ReLU mask + sum in one pass
        lay = (_k.usable(y, grad_out, *([out] if ctx.relu else []))
               if ctx.att and weight.dtype == torch.float32 else None)
        if lay is not None and ctx.relu:
            g, g_t = torch.empty_like(y), y.new_empty(n, c)  # (N, C, T, H, W), (N, C)
            _k.cpu_kernels().gc_relu_grad_sum(grad_out.data_ptr(), out.data_ptr(), g.data_ptr(), g_t.data_ptr(),
                                              n, c, y[0, 0].numel(), lay,
                                              torch.get_num_threads())
            g_t = g_t.to(t_dtype)
        else:
            g = torch.ops.aten.threshold_backward(grad_out, out, 0) if ctx.relu else grad_out  # (N, C, T, H, W)
            g_t = g.sum(dim=(2, 3, 4), dtype=_acc_dtype(g.dtype)).to(t_dtype)  # (N, C): the broadcast add's backward
        g_ctx, g_params = block._transform_grad(saved, g_t)  # (N, C), one per transform parameter
        grad_y = grad_w = grad_b = None
        if ctx.att and lay is not None:  # one pass over y and g (_gc_kernels.c)
            grad_y, gw, gb = _pool_backward_kernel(y, lay, g, p, context, g_ctx, weight, ctx.needs_input_grad[0])
            grad_w = gw.view_as(weight) if ctx.needs_input_grad[2] else None
            grad_b = gb if ctx.has_bias and ctx.needs_input_grad[3] else None
        elif ctx.att:
            yf, cl = _flatten_positions(y)
            gl, gw = _pool_backward(yf, cl, p, g_ctx, x=y)
            if ctx.needs_input_grad[0]:
                grad_y = _add_rank2(g, g_ctx, p, weight.reshape(1, -1).expand(n, c), gl)  # g + p g_ctx + gl w
            if ctx.needs_input_grad[2]:
                grad_w = gw.to(weight.dtype).view_as(weight)
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_b = gl.sum().reshape(1).to(weight.dtype)
        elif ctx.needs_input_grad[0]:
            l = y[0, 0].numel()
            grad_y = g + (g_ctx / l).to(g.dtype).view(n, c, 1, 1, 1)  # mean pooling: dctx / L everywhere
        grad_s = g if ctx.has_shortcut and ctx.needs_input_grad[1] else None
        return (grad_y, grad_s, grad_w, grad_b, None, None, *g_params)


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
        fused: use the fused autograd Functions (attention pooling; for add fusion the
            whole block, see ``_ContextAdd``); False keeps the plain autograd reference path.
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

    @torch.no_grad()
    def _transform_saved(self, context: torch.Tensor):
        """The transform on (N, C) vectors, without autograd: (t (N, C), what ``_transform_grad`` needs).

        The math of ``self.transform`` on (N, C, 1, 1, 1), without 5-D conv calls on 1x1x1 tensors:
        a float32 CPU bottleneck at small batch runs in one C call (``kernels.transform_forward``),
        anything else as torch ops (the 1x1x1 convs as matrices, LayerNorm over Cr).
        """
        if self.transform_kind == "bottleneck":
            out = _k.transform_forward(context, *self._kernel_transform_params())
            if out is not None:
                return out[0], ("kernel", out[1])
        h, saved = context, []
        for m in self.transform:
            if isinstance(m, nn.Conv3d):
                saved.append(h)  # the layer's input, for dL/dW
                h = _k.linear(h, m.weight.view(m.out_channels, m.in_channels), m.bias)  # (N, C_out)
            elif isinstance(m, nn.LayerNorm):
                mu = h.mean(dim=1, keepdim=True)
                rstd = (h.var(dim=1, unbiased=False, keepdim=True) + m.eps).rsqrt()  # (N, 1)
                hn = (h - mu) * rstd  # (N, Cr)
                saved.append((hn, rstd))
                h = hn * m.weight.view(-1) + m.bias.view(-1)
            elif isinstance(m, nn.ReLU):
                h = torch.relu(h)
                saved.append(h)
            elif not isinstance(m, nn.Identity):
                raise TypeError(f"unexpected transform layer {m}")
            else:
                saved.append(None)
        return h, saved

    def _kernel_transform_params(self):
        """(w1 (Cr, C), b1, lnw, lnb, eps, w2 (C, Cr), b2) of a bottleneck transform as matrices/vectors."""
        conv1, norm, _, conv2 = self.transform
        ln = isinstance(norm, nn.LayerNorm)
        return (conv1.weight.view(conv1.out_channels, -1), conv1.bias, norm.weight.view(-1) if ln else None,
                norm.bias.view(-1) if ln else None, norm.eps if ln else 0.0,
                conv2.weight.view(conv2.out_channels, -1), conv2.bias)

    def _kernel_param_grads(self, grads):
        """[gW1, gb1, glnw, glnb, gW2, gb2] of the C transform -> grads in ``transform.parameters()`` order
        (None for frozen parameters)."""
        conv1, norm, _, conv2 = self.transform
        gw1, gb1, glnw, glnb, gw2, gb2 = grads
        ln = isinstance(norm, nn.LayerNorm)
        params = [conv1.weight, conv1.bias] + ([norm.weight, norm.bias] if ln else []) + [conv2.weight, conv2.bias]
        vals = [gw1, gb1] + ([glnw, glnb] if ln else []) + [gw2, gb2]
        return [v.view_as(q) if q.requires_grad else None for q, v in zip(params, vals)]

    def _block_kernel_forward(self, y, shortcut, weight, bias):
        """relu(y + shortcut + term(y)) in one C call, or None where it does not apply."""
        if self.pooling != "att" or self.transform_kind != "bottleneck":
            return None
        w = weight.detach().reshape(-1)
        return _k.block_forward(y, shortcut, w, bias, *self._kernel_transform_params())

    def _block_kernel_backward(self, grad_out, out, y, p, weight, saved):
        w1, _, lnw, _, _, w2, _ = self._kernel_transform_params()
        res = _k.block_backward(grad_out, out, y, p, weight.detach().reshape(-1), saved, w1, lnw, w2)
        if res is None:
            return None
        g, grad_y, grads, gw, gb = res
        return g, grad_y, self._kernel_param_grads(grads), gw, gb

    @torch.no_grad()
    def _transform_grad(self, saved, g: torch.Tensor):
        """Backward of ``_transform_saved`` by hand (a few (N, C) ops; no autograd graph to build
        in forward and walk in backward): (dL/dcontext, grads of ``self.transform.parameters()``)."""
        if isinstance(saved, tuple):  # ("kernel", ...): the C transform (_transform_saved)
            w1, _, lnw, _, _, w2, _ = self._kernel_transform_params()
            g, grads = _k.transform_backward(saved[1], g, w1, lnw, w2, w1.requires_grad, w2.requires_grad)
            return g, self._kernel_param_grads(grads)
        grads = {}
        layers = list(self.transform)
        for i in range(len(layers) - 1, -1, -1):
            m, sv = layers[i], saved[i]
            if isinstance(m, nn.Conv3d):
                if m.bias is not None and m.bias.requires_grad:
                    grads[m.bias] = g.sum(0)
                # dL/dW = g^T sv, dL/dsv = g W: one pass over W (C kernel) at small batch
                gw, g = _k.linear_backward(m.weight.view(m.out_channels, m.in_channels), sv, g.contiguous(),
                                           m.weight.requires_grad)  # (C_out, C_in), (N, C_in)
                if gw is not None:
                    grads[m.weight] = gw.view_as(m.weight)  # (C_out, C_in, 1, 1, 1)
            elif isinstance(m, nn.LayerNorm):
                hn, rstd = sv
                if m.weight.requires_grad:
                    grads[m.weight] = (g * hn).sum(0).view_as(m.weight)
                if m.bias.requires_grad:
                    grads[m.bias] = g.sum(0).view_as(m.bias)
                gw = g * m.weight.view(-1)
                g = rstd * (gw - gw.mean(dim=1, keepdim=True) - hn * (gw * hn).mean(dim=1, keepdim=True))
            elif isinstance(m, nn.ReLU):
                g = g * (sv > 0)
        return g, [grads.get(q) for q in self.transform.parameters()]

    def _use_fused_add(self, x: torch.Tensor) -> bool:
        return (self.fused and self.fusion == "add" and not torch.jit.is_tracing()
                and not torch.jit.is_scripting())

    def _fused_add(self, x: torch.Tensor, shortcut: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
        params = list(self.transform.parameters())
        w = self.conv_mask.weight if self.pooling == "att" else None
        b = self.conv_mask.bias if self.pooling == "att" else None
        return _ContextAdd.apply(x, shortcut, w, b, self, relu, *params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_fused_add(x):
            return self._fused_add(x, None, relu=False)  # x + term(x), one Function
        t = self.term(x)
        return x * t if self.fusion == "mul" else x + t

    def residual(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """relu(shortcut + self(x)): the block at the pre_add position of a residual unit.

        Fused (add fusion, fused=True): one Function, the broadcast add merged into the
        residual add + ReLU; otherwise, or while forward hooks are registered on this block
        (or globally), the composition relu(self(x) + shortcut), which calls the module so
        the hooks see its input and output.
        """
        if self._use_fused_add(x) and not self._has_forward_hooks():
            return self._fused_add(x, shortcut, relu=True)
        return torch.relu(self(x) + shortcut)

    def _has_forward_hooks(self) -> bool:
        from torch.nn.modules import module as _m

        return bool(self._forward_hooks or self._forward_pre_hooks or _m._global_forward_hooks
                    or _m._global_forward_pre_hooks)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights over positions, (N, T, H, W) (softmax over all T*H*W)."""
        if self.pooling != "att":
            raise RuntimeError("this block uses average pooling: its weights are uniform")
        _, p = attention_pool(x, self.conv_mask.weight, self.conv_mask.bias, fused=False)
        return p.view(x.shape[0], *x.shape[2:])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, pooling={self.pooling}, transform={self.transform_kind}, "
                f"norm={self.norm_kind}, fusion={self.fusion}")
