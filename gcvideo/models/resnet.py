"""Slow-only ResNet-3D with global-context / non-local blocks.

References: C. Feichtenhofer et al., "SlowFast Networks for Video Recognition"
(ICCV 2019), Table 1 (Slow pathway, "Slow-only" 8x8); Y. Cao et al., "Global
Context Networks" (TPAMI 2020), Sec. 5.3 and Table 10 (GC/SNL/NL in Slow-only
R50 on Kinetics-400).

Layout and parameter names follow pytorchvideo's ``slow_r50`` (``blocks.0`` stem,
``blocks.1-4`` res2-res5, ``blocks.5`` head), so its checkpoints load as they are.
Stem: 1x7x7 conv stride (1, 2, 2) + BN + ReLU + 1x3x3 max pool stride (1, 2, 2).
Bottleneck: conv_a (Tk x1x1) -> conv_b (1x3x3, spatial stride) -> conv_c (1x1x1),
Tk = 3 in res4 and res5, 1 elsewhere; no temporal downsampling. A context block
sits after norm_c before the residual add ("pre_add", gc/snl/se) or after the
block's output ReLU ("post_relu", nl).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from pytorchvideo.models.resnet import ResStage
from pytorchvideo.models.stem import create_res_basic_stem

from gcvideo.layers import CONTEXT_POSITIONS, ContextSpec, create_context_block


__all__ = ["SlowResNet", "ResNetSpec", "ContextPlacement", "CONTEXT_POSITIONS", "Bottleneck", "ContextResBlock", "ResNetHead", "context_block_label"]

_CONTEXT_NAME = re.compile(r"blocks\.(\d+)\.res_blocks\.(\d+)\.(branch2\.)?context")


def context_block_label(name: str) -> str:
    """The short name of a context block (``SlowResNet.named_context_blocks``), the one that figures
    show and ``--blocks`` takes: ``blocks.3.res_blocks.5.branch2.context`` (in the residual branch)
    -> ``res4.5``, ``blocks.3.res_blocks.5.context`` (after the residual add and ReLU) -> ``res4.5+``;
    any other name is returned as it is."""
    m = _CONTEXT_NAME.fullmatch(name)
    if m is None:
        return name
    return f"res{int(m.group(1)) + 1}.{m.group(2)}" + ("" if m.group(3) else "+")


class Bottleneck(nn.Module):
    """conv_a (Tk x1x1) -> conv_b (1x3x3, spatial stride) -> conv_c (1x1x1), BN after each, ReLU
    after the first two; an optional context block after norm_c. Attribute names are those of
    pytorchvideo's ``BottleneckBlock``, so its state-dict keys load as they are."""

    def __init__(self, *, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int,
                 spatial_stride: int, bn_eps: float, bn_momentum: float,
                 context: Optional[nn.Module] = None):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                                bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner, eps=bn_eps, momentum=bn_momentum)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1), bias=False)
        self.norm_b = nn.BatchNorm3d(dim_inner, eps=bn_eps, momentum=bn_momentum)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out, eps=bn_eps, momentum=bn_momentum)
        self.context = context  # the pre_add block (a ResidualContext) or None

    def forward_branch(self, x: torch.Tensor) -> torch.Tensor:
        """conv_a ... norm_c, without the context block: (N, C_in, T, H, W) -> (N, C_out, T, H', W')."""
        x = self.act_a(self.norm_a(self.conv_a(x)))  # (N, C_inner, T, H, W)
        x = self.act_b(self.norm_b(self.conv_b(x)))  # (N, C_inner, T, H', W')
        return self.norm_c(self.conv_c(x))  # (N, C_out, T, H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_branch(x)  # (N, C_out, T, H', W')
        return x if self.context is None else self.context(x)


class ContextResBlock(nn.Module):
    """relu(shortcut(x) + branch2(x)), then an optional context block (the post_relu position).

    Attribute names are those of pytorchvideo's ``ResBlock`` (branch1_conv, branch1_norm: the
    projection shortcut, or None for the identity; branch2: the ``Bottleneck``)."""

    def __init__(self, *, branch1_conv: Optional[nn.Module], branch1_norm: Optional[nn.Module],
                 branch2: Bottleneck, context: Optional[nn.Module] = None):
        super().__init__()
        self.branch1_conv, self.branch1_norm, self.branch2 = branch1_conv, branch1_norm, branch2
        self.activation = nn.ReLU(inplace=True)
        self.context = context  # the post_relu block or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))  # (N, C_out, T, H', W')
        y, pre = self.branch2.forward_branch(x), self.branch2.context  # (N, C_out, T, H', W')
        if pre is None:
            x = self.activation(y + shortcut)
        else:  # relu(shortcut + pre(y)): the block's one hook (ResidualContext.residual)
            x = pre.residual(y, shortcut)  # (N, C_out, T, H', W')
        return x if self.context is None else self.context(x)


class ResNetHead(nn.Module):
    """Average pool, dropout, linear: (N, C, T, H, W) -> (N, classes).

    ``pool_kernel`` None: global average pool over (T, H, W). Otherwise the peers' fixed pool
    (pytorchvideo ``create_res_basic_head``, PySlowFast ``ResNetBasicHead``): ``AvgPool3d(pool_kernel,
    stride 1)``, the classifier at every pooled position, and the positions averaged: their logits
    (``position_average="logits"``, pytorchvideo) or, in eval mode, their softmax probabilities
    (``"probs"``, PySlowFast), returned as the log of the mean so that a softmax of the output gives it.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float,
                 pool_kernel: Optional[Sequence[int]] = None, position_average: str = "logits"):
        super().__init__()
        if position_average not in ("logits", "probs"):
            raise ValueError(f"position_average={position_average!r}: expected 'logits' or 'probs'")
        self.pool_kernel = tuple(pool_kernel) if pool_kernel is not None else None
        self.position_average = position_average
        self.pool = nn.AdaptiveAvgPool3d(1) if pool_kernel is None else nn.AvgPool3d(self.pool_kernel, stride=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_kernel is None:
            x = self.pool(x).flatten(1)  # (N, C)
            return self.proj(self.dropout(x))  # (N, classes)
        if any(s < k for s, k in zip(x.shape[2:], self.pool_kernel)):
            raise ValueError(f"features {tuple(x.shape[2:])} are smaller than the head's pool {self.pool_kernel} "
                             "(MODEL.HEAD_POOL train_crop_*: inputs must be at least the training clip size)")
        x = self.pool(x)  # (N, C, T', H', W'): one vector per position
        logits = self.proj(self.dropout(x.permute(0, 2, 3, 4, 1))).flatten(1, 3)  # (N, positions, classes)
        if self.position_average == "probs" and not self.training:
            acc = torch.promote_types(logits.dtype, torch.float32)  # half/bf16 softmax in float32
            return torch.log(torch.softmax(logits.to(acc), dim=-1).mean(1)).to(logits.dtype)  # (N, classes)
        return logits.mean(1)  # (N, classes)



@dataclass(frozen=True)
class ResNetSpec:
    """The backbone and head of a ``SlowResNet`` (config MODEL.*, read by ``build_model``).

    stage_depths: bottleneck blocks in res2..res5 ([3,4,6,3] R50, [3,4,23,3] R101); num_classes;
    width: stem channels (64; res2..res5 output 4x..32x this); stem_kernel: stem conv (T, H, W);
    temporal_kernels: conv_a temporal kernel per stage; dropout: before the classifier;
    bn_eps, bn_momentum: BatchNorm settings; zero_init_final_bn: every bottleneck's norm_c starts at
    zero scale; head_pool_kernel, head_position_average: the head's fixed pool (None: global) and how
    its positions are averaged (see ``ResNetHead``).
    """

    stage_depths: Tuple[int, ...] = (3, 4, 6, 3)
    num_classes: int = 400
    width: int = 64
    stem_kernel: Tuple[int, ...] = (1, 7, 7)
    temporal_kernels: Tuple[int, ...] = (1, 1, 3, 3)
    dropout: float = 0.5
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    zero_init_final_bn: bool = False
    head_pool_kernel: Optional[Tuple[int, ...]] = None
    head_position_average: str = "logits"

    def __post_init__(self):
        for name in ("stage_depths", "stem_kernel", "temporal_kernels", "head_pool_kernel"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(value))
        if len(self.temporal_kernels) != len(self.stage_depths):
            raise ValueError(f"ResNetSpec.temporal_kernels={self.temporal_kernels!r}: expected one kernel per "
                             f"stage ({len(self.stage_depths)}, as stage_depths)")


@dataclass(frozen=True)
class ContextPlacement:
    """Where a ``SlowResNet`` puts context blocks, and which: ``spec`` at block indices ``where[s]`` of
    stage s (res2..res5), at ``position`` "pre_add" (after norm_c, before the residual add: gc/snl/se)
    or "post_relu" (after the block's output ReLU: nl)."""

    spec: ContextSpec
    where: Tuple[FrozenSet[int], ...]
    position: str = "pre_add"

    def __post_init__(self):
        if not isinstance(self.spec, ContextSpec):
            raise ValueError(f"ContextPlacement.spec={self.spec!r}: expected a ContextSpec")
        if self.position not in CONTEXT_POSITIONS:
            raise ValueError(f"ContextPlacement.position={self.position!r}: expected one of {CONTEXT_POSITIONS}")
        object.__setattr__(self, "where", tuple(frozenset(ix) for ix in self.where))

    def block(self, position: str, stage: int, block: int, channels: int) -> Optional[nn.Module]:
        """The context block at (``position``, ``stage``, ``block``), or None."""
        if position != self.position or stage >= len(self.where) or block not in self.where[stage]:
            return None
        return create_context_block(self.spec, channels)


class SlowResNet(nn.Module):
    """Slow-only ResNet-3D: (N, 3, T, H, W) -> logits (N, num_classes).

    Args:
        spec: the backbone and head (``ResNetSpec``).
        context: the context blocks and their places (``ContextPlacement``), or None for none.
    """

    def __init__(self, spec: ResNetSpec = ResNetSpec(), context: Optional[ContextPlacement] = None):
        super().__init__()
        if not isinstance(spec, ResNetSpec):
            raise TypeError(f"SlowResNet(spec, context): spec is a {type(spec).__name__}, expected a ResNetSpec")
        self.spec, self.placement = spec, context
        width, bn_eps, bn_momentum, stem_kernel = spec.width, spec.bn_eps, spec.bn_momentum, spec.stem_kernel
        self.stage_depths = list(spec.stage_depths)
        blocks: List[nn.Module] = [create_res_basic_stem(
            in_channels=3, out_channels=width, conv_kernel_size=tuple(stem_kernel),
            conv_stride=(1, 2, 2), conv_padding=tuple(k // 2 for k in stem_kernel),
            pool=nn.MaxPool3d, pool_kernel_size=(1, 3, 3), pool_stride=(1, 2, 2), pool_padding=(0, 1, 1),
            norm=nn.BatchNorm3d, norm_eps=bn_eps, norm_momentum=bn_momentum, activation=nn.ReLU)]
        dim_in = width
        # Stages res2..res5: one loop, widths doubling, spatial stride 2 from res3 on.
        for s, depth in enumerate(self.stage_depths):
            dim_out = width * 4 * 2 ** s
            dim_inner = dim_out // 4
            res_blocks = []
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                needs_proj = b == 0 and (dim_in != dim_out or stride != 1)
                branch2 = Bottleneck(
                    dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out,
                    temporal_kernel=spec.temporal_kernels[s], spatial_stride=stride,
                    bn_eps=bn_eps, bn_momentum=bn_momentum,
                    context=self._context_block("pre_add", s, b, dim_out))
                res_blocks.append(ContextResBlock(
                    branch1_conv=nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
                    if needs_proj else None,
                    branch1_norm=nn.BatchNorm3d(dim_out, eps=bn_eps, momentum=bn_momentum) if needs_proj else None,
                    branch2=branch2,
                    context=self._context_block("post_relu", s, b, dim_out)))
                dim_in = dim_out
            blocks.append(ResStage(nn.ModuleList(res_blocks)))
        blocks.append(ResNetHead(dim_in, spec.num_classes, spec.dropout, spec.head_pool_kernel,
                                 spec.head_position_average))
        self.blocks = nn.ModuleList(blocks)
        self.num_features = dim_in
        self._init_weights(spec.zero_init_final_bn)

    def _context_block(self, position: str, stage: int, block: int, channels: int) -> Optional[nn.Module]:
        return None if self.placement is None else self.placement.block(position, stage, block, channels)

    def _init_weights(self, zero_init_final_bn: bool) -> None:
        # Backbone only: context blocks keep their own (zero) initialisation.
        context_params = {id(p) for m in self.context_blocks() for p in m.parameters()}
        for m in self.modules():
            if isinstance(m, nn.Conv3d) and id(m.weight) not in context_params:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d) and id(m.weight) not in context_params:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_final_bn:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.norm_c.weight)
        head = self.blocks[-1].proj
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)

    def context_blocks(self) -> List[nn.Module]:
        """All context blocks in network order."""
        return [m for _, m in self.named_context_blocks()]

    def named_context_blocks(self):
        """(name, module) for every context block, in network order."""
        return [(f"{n}.context", m.context) for n, m in self.named_modules()
                if isinstance(m, (Bottleneck, ContextResBlock)) and m.context is not None]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> last-stage features (N, C, T, H/32, W/32), before pooling."""
        for block in self.blocks[:-1]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[-1](self.forward_features(x))  # (N, num_classes)
