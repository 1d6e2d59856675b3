"""Build a model from a config: the only place in gcvideo.models that reads one."""
from __future__ import annotations

from fvcore.common.config import CfgNode

from gcvideo.config import context_indices, stage_depths, validate_cfg
from gcvideo.layers import create_context_block
from gcvideo.models.resnet import SlowResNet


def context_position(kind: str, position: str) -> str:
    """'pre_add' or 'post_relu' for block type ``kind`` and CONTEXT.POSITION ``position``."""
    if position != "auto":
        return position
    return "post_relu" if kind == "nl" else "pre_add"


def build_model(cfg: CfgNode) -> SlowResNet:
    """Slow-only ResNet-3D with the context blocks the config places.

    The config is validated first (also one edited in Python rather than loaded with
    ``load_cfg``), so a misplaced block index is an error, never a silently missing block.
    """
    validate_cfg(cfg, check_files=False)
    m, c = cfg.MODEL, cfg.CONTEXT
    depths = stage_depths(cfg)
    where = [set(ix) for ix in context_indices(c.LOCATION, depths)]

    def factory(stage: int, block: int, channels: int):
        if c.TYPE == "none" or block not in where[stage]:
            return None
        return create_context_block(
            c.TYPE, channels, ratio=c.RATIO, pooling=c.POOLING, transform=c.TRANSFORM, norm=c.NORM,
            fusion=c.FUSION, att_bias=c.ATT_BIAS, zero_init=c.ZERO_INIT, fused=c.FUSED,
            nl_instantiation=c.NL_INSTANTIATION, nl_inner_ratio=c.NL_INNER_RATIO,
            nl_pool=list(c.NL_POOL), nl_pool_position=c.NL_POOL_POSITION, nl_scale=c.NL_SCALE,
            bn_eps=m.BN_EPS, bn_momentum=m.BN_MOMENTUM)

    pos = context_position(c.TYPE, c.POSITION)
    # the peers' head: a pool sized for the training clip's last-stage features (stride 32, no time stride)
    d = cfg.DATA
    head_kernel = None if m.HEAD_POOL == "global" else (d.NUM_FRAMES, d.TRAIN_CROP_SIZE // 32, d.TRAIN_CROP_SIZE // 32)
    return SlowResNet(
        stage_depths=depths, num_classes=m.NUM_CLASSES, width=m.WIDTH, stem_kernel=m.STEM_KERNEL,
        temporal_kernels=m.TEMPORAL_KERNELS, dropout=m.DROPOUT, bn_eps=m.BN_EPS,
        bn_momentum=m.BN_MOMENTUM, zero_init_final_bn=m.ZERO_INIT_FINAL_BN,
        context_factory=factory if pos == "pre_add" else None,
        post_context_factory=factory if pos == "post_relu" else None,
        head_pool_kernel=head_kernel, head_position_average="probs" if m.HEAD_POOL == "train_crop_probs" else "logits")
