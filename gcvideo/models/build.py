"""Build a model from a config: the only place in gcvideo.models that reads one."""
from __future__ import annotations

from typing import Optional

from fvcore.common.config import CfgNode

from gcvideo.config import context_indices, stage_depths, validate_cfg
from gcvideo.layers import ContextSpec, NonLocalSpec
from gcvideo.models.resnet import ContextPlacement, ResNetSpec, SlowResNet


def context_position(kind: str, position: str) -> str:
    """'pre_add' or 'post_relu' for block type ``kind`` and CONTEXT.POSITION ``position``."""
    if position != "auto":
        return position
    return "post_relu" if kind == "nl" else "pre_add"


def context_spec(cfg: CfgNode) -> ContextSpec:
    """The config's CONTEXT section (and MODEL.BN_* for the non-local block's BatchNorm) as one spec."""
    m, c = cfg.MODEL, cfg.CONTEXT
    nl = NonLocalSpec(instantiation=c.NL_INSTANTIATION, inner_ratio=c.NL_INNER_RATIO, pool=tuple(c.NL_POOL),
                      pool_position=c.NL_POOL_POSITION, scale=c.NL_SCALE, bn_eps=m.BN_EPS, bn_momentum=m.BN_MOMENTUM)
    return ContextSpec(c.TYPE, ratio=c.RATIO, pooling=c.POOLING, transform=c.TRANSFORM, norm=c.NORM,
                       fusion=c.FUSION, att_bias=c.ATT_BIAS, zero_init=c.ZERO_INIT, fused=c.FUSED, nl=nl)


def resnet_spec(cfg: CfgNode) -> ResNetSpec:
    """The config's MODEL section (and the training clip size, for the peers' fixed head pool) as one spec."""
    m, d = cfg.MODEL, cfg.DATA
    # the peers' head: a pool sized for the training clip's last-stage features (stride 32, no time stride)
    head_kernel = None if m.HEAD_POOL == "global" else (d.NUM_FRAMES, d.TRAIN_CROP_SIZE // 32, d.TRAIN_CROP_SIZE // 32)
    return ResNetSpec(
        stage_depths=tuple(stage_depths(cfg)), num_classes=m.NUM_CLASSES, width=m.WIDTH, stem_kernel=tuple(m.STEM_KERNEL),
        temporal_kernels=tuple(m.TEMPORAL_KERNELS), dropout=m.DROPOUT, bn_eps=m.BN_EPS, bn_momentum=m.BN_MOMENTUM,
        zero_init_final_bn=m.ZERO_INIT_FINAL_BN, head_pool_kernel=head_kernel,
        head_position_average="probs" if m.HEAD_POOL == "train_crop_probs" else "logits")


def context_placement(cfg: CfgNode) -> Optional[ContextPlacement]:
    """The config's context blocks and their places, or None for CONTEXT.TYPE none."""
    c = cfg.CONTEXT
    if c.TYPE == "none":
        return None
    where = tuple(frozenset(ix) for ix in context_indices(c.LOCATION, stage_depths(cfg)))
    return ContextPlacement(context_spec(cfg), where, context_position(c.TYPE, c.POSITION))


def build_model(cfg: CfgNode) -> SlowResNet:
    """Slow-only ResNet-3D with the context blocks the config places.

    The config is validated first (also one edited in Python rather than loaded with
    ``load_cfg``), so a misplaced block index is an error, never a silently missing block;
    then it is read once into a ``ResNetSpec`` and a ``ContextPlacement`` (its ``ContextSpec``).
    """
    validate_cfg(cfg, check_files=False)
    return SlowResNet(resnet_spec(cfg), context_placement(cfg))
