"""Checkpoint interop: the key names and semantics of PySlowFast, Caffe2 and mmaction2 models.

References: C. Feichtenhofer et al., PySlowFast (Slow-only R50 "8x8" and its non-local
variant); X. Wang et al., "Non-local Neural Networks" (CVPR 2018), whose Caffe2 code
released the ``.pkl`` blob files; mmaction2 (``ResNet3dSlowOnly`` + ``I3DHead``, mmcv's
``NonLocal3d``).

Three naming schemes map onto gcvideo's (= pytorchvideo's ``slow_r50``) names:

========================================  ==========================================================
PySlowFast ``model_state``                gcvideo
========================================  ==========================================================
``s1.pathway0_stem.conv|bn.*``            ``blocks.0.conv|norm.*``
``s{k}.pathway0_res{i}.branch1.*``        ``blocks.{k-1}.res_blocks.{i}.branch1_conv.*``
``s{k}.pathway0_res{i}.branch1_bn.*``     ``blocks.{k-1}.res_blocks.{i}.branch1_norm.*``
``s{k}.pathway0_res{i}.branch2.a|b|c.*``  ``blocks.{k-1}.res_blocks.{i}.branch2.conv_a|b|c.*``
``s{k}.pathway0_res{i}.branch2.a_bn.*``   ``blocks.{k-1}.res_blocks.{i}.branch2.norm_a.*`` (b, c alike)
``s{k}.pathway0_nonlocal{i}.X.*``         ``blocks.{k-1}.res_blocks.{i}.context.X.*`` (X = conv_theta,
                                          conv_phi, conv_g, conv_out, bn; PySlowFast runs the block
                                          after res block i: our ``post_relu`` position)
``head.projection.*``                     ``blocks.5.proj.*``
========================================  ==========================================================

mmaction2 (``backbone.``/``cls_head.`` prefixes; mmcv ``ConvModule`` = ``conv`` + ``bn``):
``backbone.conv1.conv|bn`` -> ``blocks.0.conv|norm``; ``backbone.layer{s}.{i}.conv1|2|3.conv|bn`` ->
``blocks.{s}.res_blocks.{i}.branch2.conv_a|b|c / norm_a|b|c``; ``...downsample.conv|bn`` ->
``branch1_conv|branch1_norm``; ``...non_local_block.theta|phi|g[.0].conv`` -> ``context.conv_theta|phi|g``
(``.0`` when ``sub_sample`` max-pools after the conv), ``...non_local_block.conv_out.conv|bn`` ->
``context.conv_out|bn`` (mmcv's conv_out has no bias before its BN: filled with zeros),
``...non_local_block.concat_project.conv`` -> ``context.concat_project``; ``cls_head.fc_cls`` ->
``blocks.5.proj``. mmaction2's non-local block sits after the block's output ReLU (``post_relu``).

Caffe2 blob names (``{"blobs": {name: ndarray}}``): ``conv1_w``, ``res_conv1_bn_{s,b,rm,riv}``,
``res{k}_{i}_branch2{a,b,c}_w``, ``res{k}_{i}_branch2{a,b,c}_bn_{s,b,rm,riv}``,
``res{k}_{i}_branch1_w`` / ``_bn_*``, ``nonlocal_conv{k}_{i}_{theta,phi,g,out}_{w,b}``,
``nonlocal_conv{k}_{i}_bn_*``, ``pred_w`` / ``pred_b``. BN suffixes: ``s`` scale -> weight,
``b`` -> bias, ``rm`` -> running_mean, ``riv`` -> running_var (Caffe2's SpatialBN stores the
running *variance* under this name, as PySlowFast's converter also assumes).

Non-local semantics the weights cannot show (checked in :func:`check_nonlocal_semantics`):
PySlowFast (``slowfast/models/nonlocal_helper.py``) max-pools the block *input* before phi and g
(``CONTEXT.NL_POOL_POSITION before_conv``); its ``NONLOCAL.INSTANTIATION`` is ``dot_product`` (its
default: theta^T phi / number of key positions = ``CONTEXT.NL_INSTANTIATION dot_product``) or
``softmax`` (softmax of theta^T phi / sqrt(inner) = ``embedded_gaussian`` with ``CONTEXT.NL_SCALE
True``); its norm is a BatchNorm (``bn`` in newer releases, ``norm`` in older ones); ``NONLOCAL.GROUP``
> 1 folds time into the batch, which gcvideo does not have. A ``.pyth`` carries its config (``cfg``,
YAML text): these settings are read from it and compared with the model, and a mismatch is an error
giving the exact gcvideo keys and values. mmcv's ``NonLocal3d`` pools after the convs (``after_conv``,
kernel (1, 2, 2) with ``sub_sample``) and scales embedded-gaussian logits when ``use_scale``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import yaml

from gcvideo.layers import NonLocalBlock
from gcvideo.utils.io import CheckpointError, CheckpointMismatchError

__all__ = ["slowfast_to_gcvideo_key", "caffe2_to_gcvideo_key", "mmaction2_to_gcvideo_key", "convert_state_dict",
           "NonLocalSettings", "pyslowfast_nonlocal_settings", "mmaction2_nonlocal_settings",
           "check_nonlocal_semantics"]


# ---------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------
_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_PARAM_SUFFIX = {"w": "weight", "b": "bias"}


def slowfast_to_gcvideo_key(key: str, head_index: int = 5) -> Optional[str]:
    """PySlowFast Slow-only key -> gcvideo key (None if it has no place in gcvideo)."""
    m = re.fullmatch(r"s1\.pathway0_stem\.(conv|bn)\.(\w+)", key)
    if m:
        return f"blocks.0.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(2)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_res(\d+)\.(branch1|branch1_bn)\.(\w+)", key)
    if m:
        part = "branch1_conv" if m.group(3) == "branch1" else "branch1_norm"
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.{part}.{m.group(4)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_res(\d+)\.branch2\.([abc])(_bn)?\.(\w+)", key)
    if m:
        part = ("norm_" if m.group(4) else "conv_") + m.group(3)
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.branch2.{part}.{m.group(5)}"
    m = re.fullmatch(r"s([2-5])\.pathway0_nonlocal(\d+)\.(conv_theta|conv_phi|conv_g|conv_out|bn|norm)\.(\w+)", key)
    if m:  # the block's BN is "bn" in older PySlowFast releases, "norm" in newer ones
        part = "bn" if m.group(3) == "norm" else m.group(3)
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.{part}.{m.group(4)}"
    m = re.fullmatch(r"head\.projection\.(weight|bias)", key)
    if m:
        return f"blocks.{head_index}.proj.{m.group(1)}"
    return None


def caffe2_to_gcvideo_key(name: str, head_index: int = 5) -> Optional[str]:
    """Caffe2 blob name -> gcvideo key (None if it has no place in gcvideo)."""
    if name == "conv1_w":
        return "blocks.0.conv.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name)
    if m:
        return f"blocks.0.norm.{_BN_SUFFIX[m.group(1)]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch2([abc])_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if m:
        stage, block, x, suf = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4)
        if suf == "w":
            return f"blocks.{stage}.res_blocks.{block}.branch2.conv_{x}.weight"
        return f"blocks.{stage}.res_blocks.{block}.branch2.norm_{x}.{_BN_SUFFIX[suf[3:]]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch1_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if m:
        stage, block, suf = int(m.group(1)) - 1, m.group(2), m.group(3)
        if suf == "w":
            return f"blocks.{stage}.res_blocks.{block}.branch1_conv.weight"
        return f"blocks.{stage}.res_blocks.{block}.branch1_norm.{_BN_SUFFIX[suf[3:]]}"
    m = re.fullmatch(r"nonlocal_conv([2-5])_(\d+)_(theta|phi|g|out)_(w|b)", name)
    if m:
        return (f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.conv_{m.group(3)}."
                f"{_PARAM_SUFFIX[m.group(4)]}")
    m = re.fullmatch(r"nonlocal_conv([2-5])_(\d+)_bn_(s|b|rm|riv)", name)
    if m:
        return f"blocks.{int(m.group(1)) - 1}.res_blocks.{m.group(2)}.context.bn.{_BN_SUFFIX[m.group(3)]}"
    m = re.fullmatch(r"pred_(w|b)", name)
    if m:
        return f"blocks.{head_index}.proj.{_PARAM_SUFFIX[m.group(1)]}"
    return None


_MM_CONV = {"conv1": "a", "conv2": "b", "conv3": "c"}


def mmaction2_to_gcvideo_key(key: str, head_index: int = 5) -> Optional[str]:
    """mmaction2 ``ResNet3dSlowOnly`` + ``I3DHead`` key -> gcvideo key (None if it has no place)."""
    m = re.fullmatch(r"backbone\.conv1\.(conv|bn)\.(\w+)", key)
    if m:
        return f"blocks.0.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(2)}"
    m = re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.(conv[123])\.(conv|bn)\.(\w+)", key)
    if m:
        x = _MM_CONV[m.group(3)]
        part = f"conv_{x}" if m.group(4) == "conv" else f"norm_{x}"
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.branch2.{part}.{m.group(5)}"
    m = re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.downsample\.(conv|bn)\.(\w+)", key)
    if m:
        part = "branch1_conv" if m.group(3) == "conv" else "branch1_norm"
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.{part}.{m.group(4)}"
    m = re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.non_local_block\.(theta|phi|g)(?:\.0)?\.conv\.(\w+)", key)
    if m:
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.context.conv_{m.group(3)}.{m.group(4)}"
    m = re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.non_local_block\.conv_out\.(conv|bn)\.(\w+)", key)
    if m:
        part = "conv_out" if m.group(3) == "conv" else "bn"
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.context.{part}.{m.group(4)}"
    m = re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.non_local_block\.concat_project\.conv\.weight", key)
    if m:
        return f"blocks.{m.group(1)}.res_blocks.{m.group(2)}.context.concat_project.weight"
    m = re.fullmatch(r"cls_head\.fc_cls\.(weight|bias)", key)
    if m:
        return f"blocks.{head_index}.proj.{m.group(1)}"
    return None


_TO_GCVIDEO = {"pyslowfast": slowfast_to_gcvideo_key, "caffe2": caffe2_to_gcvideo_key,
               "mmaction2": mmaction2_to_gcvideo_key}


def convert_state_dict(sd: Mapping[str, torch.Tensor], fmt: str, head_index: int = 5,
                       target: Optional[Mapping[str, torch.Tensor]] = None
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """Rename a ``"pyslowfast"``, ``"caffe2"`` or ``"mmaction2"`` state dict to gcvideo keys.

    Returns (converted dict, gcvideo key -> source key, source keys with no gcvideo name).
    With ``target`` (a model's state dict), a tensor whose shape differs from the target's
    but has the same number of elements (Caffe2 FC weights stored as 1x1x1 convs, mmcv's 2-D
    concat projection, ...) is reshaped to the target shape. mmaction2 non-local blocks get
    their conv_out bias (absent: mmcv's conv before a BN has none) as zeros, source ``"(zero)"``.
    """
    to_gc = _TO_GCVIDEO.get(fmt)
    if to_gc is None:
        raise ValueError(f"fmt={fmt!r}: expected one of {sorted(_TO_GCVIDEO)}")
    out: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    untranslated: List[str] = []
    for k, v in sd.items():
        g = to_gc(k, head_index)
        if g is None:
            untranslated.append(k)
            continue
        if g in out:
            raise CheckpointError(f"{fmt} keys {source_of[g]} and {k} both map to {g}")
        if target is not None and g in target and v.shape != target[g].shape and \
                v.numel() == target[g].numel():
            v = v.reshape(target[g].shape)
        out[g] = v
        source_of[g] = k
    if fmt == "mmaction2":
        for g in [k for k in out if k.endswith(".context.conv_out.weight")]:
            bias = g[:-len("weight")] + "bias"
            if bias not in out:
                out[bias] = torch.zeros(out[g].shape[0], dtype=out[g].dtype)
                source_of[bias] = "(zero)"
    return out, source_of, untranslated


# ---------------------------------------------------------------------------
# Non-local semantics the weights do not show
# ---------------------------------------------------------------------------
@dataclass
class NonLocalSettings:
    """What a checkpoint's writer says about its non-local blocks, in gcvideo terms.

    ``known`` False: the file does not say (no config stored); then ``options`` lists the
    instantiations its code has, as (NL_INSTANTIATION, NL_SCALE) pairs.
    """
    writer: str
    known: bool
    location: Optional[List[List[int]]] = None  # per stage res2..res5
    instantiation: Optional[str] = None
    scale: Optional[bool] = None
    pool: Optional[List[int]] = None  # [] = no subsampling
    pool_position: str = "before_conv"
    options: List[Tuple[str, bool]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)  # settings gcvideo cannot express

    def gcvideo_opts(self) -> str:
        """The gcvideo ``KEY VALUE`` settings that build these blocks."""
        if not self.known:
            return " or ".join(_opts_text(dict(NL_INSTANTIATION=i, NL_SCALE=s, NL_POOL_POSITION=self.pool_position))
                               for i, s in self.options)
        if not any(self.location or []):
            return "CONTEXT.TYPE none (the checkpoint has no non-local blocks)"
        opts = dict(TYPE="nl", LOCATION=self.location, POSITION="post_relu", NL_INSTANTIATION=self.instantiation,
                    NL_INNER_RATIO=0.5, NL_POOL=self.pool, NL_POOL_POSITION=self.pool_position)
        if self.instantiation == "embedded_gaussian":
            opts["NL_SCALE"] = bool(self.scale)
        return _opts_text(opts)


def _opts_text(opts: Mapping[str, Any]) -> str:
    def value(v):
        if isinstance(v, list):
            return "'" + str(v) + "'"
        return str(v)
    return " ".join(f"CONTEXT.{k} {value(v)}" for k, v in opts.items())


_SLOWFAST_NL_DEFAULTS = {"LOCATION": [[[]], [[]], [[]], [[]]], "GROUP": [[1], [1], [1], [1]],
                         "INSTANTIATION": "dot_product", "POOL": [[[1, 2, 2], [1, 2, 2]]] * 4}


def pyslowfast_nonlocal_settings(cfg_text: Optional[str], source: str) -> NonLocalSettings:
    """The non-local settings of a PySlowFast checkpoint from its ``cfg`` (YAML text, as
    ``save_checkpoint`` stores ``cfg.dump()``); PySlowFast's defaults (``slowfast/config/defaults.py``)
    fill keys the text leaves out. No ``cfg`` or no ``NONLOCAL`` section: ``known`` False."""
    unknown = NonLocalSettings("PySlowFast", known=False, pool_position="before_conv",
                               options=[("dot_product", False), ("embedded_gaussian", True)])
    if not cfg_text:
        return unknown
    try:
        cfg = yaml.safe_load(cfg_text)
    except yaml.YAMLError as e:
        raise CheckpointError(f"checkpoint {source}: its cfg is not readable YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"checkpoint {source}: its cfg is a {type(cfg).__name__}, expected a YAML mapping")
    problems = []
    arch = (cfg.get("MODEL") or {}).get("ARCH", "slowfast")
    if arch != "slow":
        problems.append(f"MODEL.ARCH {arch} (gcvideo builds Slow-only models: MODEL.ARCH slow)")
    norm_type = (cfg.get("BN") or {}).get("NORM_TYPE", "batchnorm")
    if norm_type not in ("batchnorm", "sync_batchnorm"):
        problems.append(f"BN.NORM_TYPE {norm_type} (gcvideo has BatchNorm: batchnorm or sync_batchnorm)")
    resnet = cfg.get("RESNET") or {}  # settings that change the function, not the weights' shapes
    for key, default in (("STRIDE_1X1", False), ("SPATIAL_DILATIONS", [[1], [1], [1], [1]]),
                         ("SPATIAL_STRIDES", [[1], [2], [2], [2]])):
        if key in resnet and resnet[key] != default:
            problems.append(f"RESNET.{key} {resnet[key]} (gcvideo's Slow-only ResNet has {default})")
    if "NONLOCAL" not in cfg:
        unknown.problems = problems
        return unknown
    nl = dict(_SLOWFAST_NL_DEFAULTS, **(cfg["NONLOCAL"] or {}))
    location = [sorted(int(i) for i in stage[0]) for stage in nl["LOCATION"]]
    pools = {tuple(nl["POOL"][s][0]) for s in range(4) if location[s]}
    groups = {int(nl["GROUP"][s][0]) for s in range(4) if location[s]}
    inst = nl["INSTANTIATION"]
    if inst not in ("dot_product", "softmax"):
        problems.append(f"NONLOCAL.INSTANTIATION {inst}")
    if len(pools) > 1:
        problems.append(f"NONLOCAL.POOL differs between stages ({sorted(pools)}; gcvideo has one CONTEXT.NL_POOL)")
    if groups - {1}:
        problems.append(f"NONLOCAL.GROUP {sorted(groups)} (gcvideo's non-local blocks are not grouped over time)")
    pool = list(next(iter(pools))) if pools else [1, 2, 2]
    return NonLocalSettings(
        "PySlowFast", known=True, location=location,
        instantiation="embedded_gaussian" if inst == "softmax" else "dot_product", scale=inst == "softmax",
        pool=pool if any(k > 1 for k in pool) else [], pool_position="before_conv", problems=problems)


def mmaction2_nonlocal_settings(meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> NonLocalSettings:
    """mmaction2 non-local settings: locations and ``sub_sample`` from the key names, ``mode`` and
    ``use_scale`` from the config text mmengine stores in ``meta["cfg"]`` (mmcv's defaults:
    embedded_gaussian, use_scale True). Without that text the two are ``known`` False."""
    location: List[List[int]] = [[], [], [], []]
    sub_sample = set()
    kinds = set()
    for k in state_dict:
        m = re.match(r"backbone\.layer([1-4])\.(\d+)\.non_local_block\.(\w+)(\.0)?\.", k)
        if m:
            s, i = int(m.group(1)) - 1, int(m.group(2))
            if i not in location[s]:
                location[s].append(i)
            kinds.add(m.group(3))
            if m.group(4) and m.group(3) in ("g", "phi"):
                sub_sample.add(True)
            elif m.group(3) in ("g", "phi"):
                sub_sample.add(False)
    location = [sorted(v) for v in location]
    problems = []
    text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else None
    if isinstance(meta.get("meta"), Mapping) and isinstance(meta["meta"].get("cfg"), str):
        text = meta["meta"]["cfg"]
    # backbone options that change the function, not the weights' names or shapes
    for pattern, what in ((r"style\s*=\s*['\"]caffe['\"]", "style='caffe' (stride on conv1)"),
                          (r"with_pool2\s*=\s*True", "with_pool2=True (a temporal pool after layer1)"),
                          (r"conv1_stride_t\s*=\s*[2-9]", "conv1_stride_t > 1"),
                          (r"pool1_stride_t\s*=\s*[2-9]", "pool1_stride_t > 1"),
                          (r"dilations\s*=\s*\((?!\s*1\s*,\s*1\s*,\s*1\s*,\s*1\s*\))", "dilations other than 1")):
        if text is not None and re.search(pattern, text):
            problems.append(f"backbone {what}: gcvideo's Slow-only ResNet differs")
    if len(sub_sample) > 1:
        problems.append("some non-local blocks sub-sample and others do not")
    pool = [1, 2, 2] if True in sub_sample else []
    if "theta" not in kinds and kinds:
        mode = "gaussian"
    elif "concat_project" in kinds:
        mode = "concat"
    else:
        mode = None  # embedded_gaussian or dot_product: only the config says
    use_scale = True
    if text is not None:
        cfg_part = re.search(r"non_local_cfg\s*=\s*dict\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text)
        if cfg_part:
            mm = re.search(r"mode\s*=\s*['\"](\w+)['\"]", cfg_part.group(1))
            sc = re.search(r"use_scale\s*=\s*(True|False)", cfg_part.group(1))
            mode_text = mm.group(1) if mm else "embedded_gaussian"
            mode = {"concatenation": "concat"}.get(mode_text, mode_text)
            use_scale = sc.group(1) == "True" if sc else True
        elif mode is None:
            text = None
    if mode is None and text is None:
        return NonLocalSettings("mmaction2", known=False, location=location, pool=pool, pool_position="after_conv",
                                options=[("embedded_gaussian", True), ("embedded_gaussian", False),
                                         ("dot_product", False)], problems=problems)
    return NonLocalSettings("mmaction2", known=True, location=location, instantiation=mode,
                            scale=use_scale if mode == "embedded_gaussian" else False, pool=pool,
                            pool_position="after_conv", problems=problems)


def _block_semantics(m: NonLocalBlock) -> Tuple[str, bool, List[int], str]:
    pool = list(m.pool.kernel_size) if m.pool is not None else []
    scale = bool(m.scale) if m.instantiation == "embedded_gaussian" else False
    return m.instantiation, scale, pool, m.pool_position


def check_nonlocal_semantics(model: nn.Module, sd: Mapping[str, torch.Tensor], settings: NonLocalSettings,
                             source: str) -> List[str]:
    """Refuse when a model's non-local block that receives weights from ``sd`` (gcvideo keys) would
    compute another function than the checkpoint's writer did; the error gives the gcvideo keys and
    values to set. Returns notes for the report (what could not be checked)."""
    if settings.problems:
        raise CheckpointMismatchError(
            f"checkpoint {source}: its {settings.writer} model cannot be built by gcvideo: "
            + "; ".join(settings.problems))
    loaded = [(n, m) for n, m in model.named_modules() if isinstance(m, NonLocalBlock)
              and any(k.startswith(n + ".") for k in sd)]
    notes = []
    for n, m in loaded:
        inst, scale, pool, position = _block_semantics(m)
        if settings.known:
            want = (settings.instantiation, bool(settings.scale), list(settings.pool), settings.pool_position)
            ok = (inst, scale, pool, position) == want
        else:
            ok = position == settings.pool_position and (inst, scale) in settings.options
        if not ok:
            got = f"NL_INSTANTIATION {inst}, NL_SCALE {m.scale}, NL_POOL {pool}, NL_POOL_POSITION {position}"
            if settings.known:
                raise CheckpointMismatchError(
                    f"checkpoint {source}: its {settings.writer} non-local blocks compute another function than "
                    f"the model of this config ({n}: {got}); set {settings.gcvideo_opts()}")
            raise CheckpointMismatchError(
                f"checkpoint {source}: {settings.writer} non-local blocks max-pool "
                f"{'the block input before phi/g' if settings.pool_position == 'before_conv' else 'the phi/g outputs'}"
                f", but {n} has {got}; "
                f"the file stores no config saying which instantiation it was trained with: set "
                f"{settings.gcvideo_opts()}")
    if loaded and not settings.known:
        notes.append(f"{settings.writer} non-local blocks: the file stores no config, so their instantiation "
                     f"({' or '.join(i + (' + NL_SCALE' if s else '') for i, s in settings.options)}) and pool "
                     "kernel could not be checked against the model's")
    return notes
