"""The fused autograd Functions of the context block (the speed path behind ``gcvideo.layers.fused``).

Same math as the reference ``ContextBlock`` (plain torch ops, gcvideo/layers/context.py), to
rounding, in fewer passes over the (N, C, T, H, W) map and with less saved memory:

- ``AttentionPool``: context = sum_j softmax_j(w . x_j + b) x_j, saving only x and the (N, L)
  attention; its backward writes dL/dx = p_j g + dl_j w in one pass.
- ``ContextAdd``: a whole add-fusion block, act(y + delta(pool(y)) [+ shortcut]), in one
  Function; the transform delta on (N, C) runs without autograd and is differentiated by hand.

On float32 CPU maps of one layout the passes over the map run in the C kernels of
``_gc_kernels.c`` (``kernels.py``); anything else runs the same steps as torch ops. The
Functions read the block's parameters through ``block`` (its ``conv_mask`` and ``transform``);
first-order gradients only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from gcvideo.layers.fused import kernels as _k
from gcvideo.utils.torch_private import add_relu_

__all__ = ["AttentionPool", "ContextAdd", "context_add", "transform_saved", "transform_grad"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax precision: float32 for half/bfloat16/float32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _has_add_relu_kernel(t: torch.Tensor) -> bool:
    """``add_relu_`` (``torch._add_relu_``, one pass for relu(a + b)) has CPU float32/float64 kernels only."""
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
            _k.pool_forward(x, w, b, lay, context, p)
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
    _k.pool_backward(y, g, p, g_ctx, context, w, lay, grad_y, gw, gb)
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


class AttentionPool(torch.autograd.Function):
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


class ContextAdd(torch.autograd.Function):
    """z = act(y + delta(pool(y)) [+ shortcut]): a whole add-fusion context block in one Function.

    Called through ``context_block`` (gcvideo/layers/fused/__init__.py) for ``block(y)`` (no
    shortcut, no ReLU) and for ``block.residual(y, shortcut)`` at the pre_add position, where the
    broadcast add of the (N, C, 1, 1, 1) term is merged into the residual add + ReLU
    (relu(y + shortcut + term), one in-place add-ReLU pass instead of a separate add).

    The transform delta (a few ops on (N, C)) runs without autograd in forward and is
    differentiated by hand in backward (``transform_saved``/``transform_grad``). In backward
    dL/dy = g + (attention-pooling part) is written in one pass (``_add_rank2``), so
    autograd never has to add the gradients of the identity path and of the pooling path.
    On float32 CPU maps of one layout the passes over the map run in the C kernels of
    ``_gc_kernels.c`` (``kernels.py``): the pooling in one pass (online softmax),
    relu(y + shortcut + term) in one pass, ReLU mask + sum over positions in one pass, and the
    pooling backward with dL/dy in one pass (three passes in all instead of seven). For a
    bottleneck GC block at the pre-add position (att pooling, shortcut, ReLU, batch <= 8) each
    direction is one C call (``gc_block_forward``/``gc_block_backward``): no torch ops between
    the kernels. Math: that of the reference ``ContextBlock.forward``, to rounding.
    First-order gradients only.
    """

    @staticmethod
    def forward(ctx, y, shortcut, weight, bias, block, relu, *params):
        fast = _block_kernel_forward(block, y, shortcut, weight, bias) if relu and shortcut is not None else None
        if fast is not None:  # the whole block in one C call (_gc_kernels.c: gc_block_forward)
            out, context, p, saved = fast
            saved, t_dtype = ("kernel", saved), torch.float32
        else:
            out, context, p, saved, t_dtype = ContextAdd._forward_steps(y, shortcut, weight, bias, block, relu)
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
            t, saved = transform_saved(block, context.detach().to(block.transform[0].weight.dtype))  # (N, C)
        term = t.to(y.dtype).view(n, c, 1, 1, 1)
        lay = _k.usable(y, shortcut) if shortcut is not None and relu else None
        if lay is not None:  # relu(y + shortcut + term) in one pass (_gc_kernels.c)
            out = torch.empty_like(y)
            _k.add_relu(y, shortcut, term.reshape(n, c).contiguous(), out, lay)
        elif shortcut is not None:
            out = torch.add(y, shortcut)  # (N, C, T, H, W)
            if relu and _has_add_relu_kernel(out):
                out = add_relu_(out, term)  # one pass: out = relu(out + term)
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
            fast = _block_kernel_backward(block, grad_out, out, y, p, weight, saved[1])
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
            _k.relu_grad_sum(grad_out, out, g, g_t, lay)
            g_t = g_t.to(t_dtype)
        else:
            g = torch.ops.aten.threshold_backward(grad_out, out, 0) if ctx.relu else grad_out  # (N, C, T, H, W)
            g_t = g.sum(dim=(2, 3, 4), dtype=_acc_dtype(g.dtype)).to(t_dtype)  # (N, C): the broadcast add's backward
        g_ctx, g_params = transform_grad(block, saved, g_t)  # (N, C), one per transform parameter
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



@torch.no_grad()

def transform_saved(block, context: torch.Tensor):
    """The transform on (N, C) vectors, without autograd: (t (N, C), what ``transform_grad`` needs).

    The math of ``block.transform`` on (N, C, 1, 1, 1), without 5-D conv calls on 1x1x1 tensors:
    a float32 CPU bottleneck at small batch runs in one C call (``kernels.transform_forward``),
    anything else as torch ops (the 1x1x1 convs as matrices, LayerNorm over Cr).
    """
    if block.transform_kind == "bottleneck":
        out = _k.transform_forward(context, *_kernel_transform_params(block))
        if out is not None:
            return out[0], ("kernel", out[1])
    h, saved = context, []
    for m in block.transform:
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


def _kernel_transform_params(block):
    """(w1 (Cr, C), b1, lnw, lnb, eps, w2 (C, Cr), b2) of a bottleneck transform as matrices/vectors."""
    conv1, norm, _, conv2 = block.transform
    ln = isinstance(norm, nn.LayerNorm)
    return (conv1.weight.view(conv1.out_channels, -1), conv1.bias, norm.weight.view(-1) if ln else None,
            norm.bias.view(-1) if ln else None, norm.eps if ln else 0.0,
            conv2.weight.view(conv2.out_channels, -1), conv2.bias)


def _kernel_param_grads(block, grads):
    """[gW1, gb1, glnw, glnb, gW2, gb2] of the C transform -> grads in ``transform.parameters()`` order
    (None for frozen parameters)."""
    conv1, norm, _, conv2 = block.transform
    gw1, gb1, glnw, glnb, gw2, gb2 = grads
    ln = isinstance(norm, nn.LayerNorm)
    params = [conv1.weight, conv1.bias] + ([norm.weight, norm.bias] if ln else []) + [conv2.weight, conv2.bias]
    vals = [gw1, gb1] + ([glnw, glnb] if ln else []) + [gw2, gb2]
    return [v.view_as(q) if q.requires_grad else None for q, v in zip(params, vals)]


def _block_kernel_forward(block, y, shortcut, weight, bias):
    """relu(y + shortcut + term(y)) in one C call, or None where it does not apply."""
    if block.pooling != "att" or block.transform_kind != "bottleneck":
        return None
    w = weight.detach().reshape(-1)
    return _k.block_forward(y, shortcut, w, bias, *_kernel_transform_params(block))


def _block_kernel_backward(block, grad_out, out, y, p, weight, saved):
    w1, _, lnw, _, _, w2, _ = _kernel_transform_params(block)
    res = _k.block_backward(grad_out, out, y, p, weight.detach().reshape(-1), saved, w1, lnw, w2)
    if res is None:
        return None
    g, grad_y, grads, gw, gb = res
    return g, grad_y, _kernel_param_grads(block, grads), gw, gb


@torch.no_grad()

def transform_grad(block, saved, g: torch.Tensor):
    """Backward of ``transform_saved`` by hand (a few (N, C) ops; no autograd graph to build
    in forward and walk in backward): (dL/dcontext, grads of ``block.transform.parameters()``)."""
    if isinstance(saved, tuple):  # ("kernel", ...): the C transform (transform_saved)
        w1, _, lnw, _, _, w2, _ = _kernel_transform_params(block)
        g, grads = _k.transform_backward(saved[1], g, w1, lnw, w2, w1.requires_grad, w2.requires_grad)
        return g, _kernel_param_grads(block, grads)
    grads = {}
    layers = list(block.transform)
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
    return g, [grads.get(q) for q in block.transform.parameters()]


def context_add(block, y: torch.Tensor, shortcut: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """act(y + delta(pool(y)) [+ shortcut]) of an add-fusion block through ``ContextAdd``."""
    w = block.conv_mask.weight if block.pooling == "att" else None
    b = block.conv_mask.bias if block.pooling == "att" else None
    return ContextAdd.apply(y, shortcut, w, b, block, relu, *block.transform.parameters())
