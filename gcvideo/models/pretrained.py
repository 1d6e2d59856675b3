"""Loading pretrained weights into a gcvideo model from any checkpoint format: the one loader of gcvideo.

:func:`load_pretrained` (fine-tuning: ``train_net.py --init-from``, :func:`add_context_blocks`)
and :func:`build_model_from_checkpoint` (inference and testing: ``test_net.py``, ``predict.py``,
``export.py``, ``visualize_attention.py``, ``analyze_nonlocal.py``) read the same formats,
recognised from the key names:

- ``imagenet-2d``: a torchvision/timm 2D ResNet (``conv1.weight``, ``layer1.0.conv1.weight``),
  also with GCNet ``context_block`` or timm ``se`` attention blocks: inflated
  (:mod:`gcvideo.models.inflate`);
- ``3d``: gcvideo / pytorchvideo names (``blocks.0.conv.weight``), e.g. pytorchvideo's ``slow_r50``
  or a gcvideo training checkpoint;
- ``pyslowfast``: a PySlowFast ``.pyth`` (``model_state`` with ``s1.pathway0_stem.*``); its ``cfg``
  is read and its non-local settings checked against the model;
- ``caffe2``: a Caffe2 ``.pkl`` (``{"blobs": {name: ndarray}}``), read by the restricted unpickler;
- ``mmaction2``: ``ResNet3dSlowOnly`` + ``I3DHead`` (``backbone.conv1.conv.weight``,
  ``cls_head.fc_cls.weight``), with ``NonLocal3d`` blocks.

Fine-tuning (``purpose="finetune"``): model keys the checkpoint lacks keep their initialisation
when they are new modules (context blocks; a head with another class count is re-initialised);
a backbone key missing, a shape that differs, or a backbone key of the checkpoint with no place
in the model (a deeper network) is an error. Unused checkpoint keys are reported.
Inference (``purpose="inference"``): every model key comes from the checkpoint and every
checkpoint weight is used; anything else is an error naming the keys. Every error names the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import yaml

from gcvideo.config import context_indices, load_cfg, stage_depths
from gcvideo.layers import layernorm_as_vectors
from gcvideo.models.build import build_model
from gcvideo.models.inflate import (InflationReport, _compact, _is_new_module_key, check_resnet_layout,
                                    inflate_state_dict)
from gcvideo.models.interop import (NonLocalSettings, check_nonlocal_semantics, convert_state_dict,
                                    mmaction2_nonlocal_settings, pyslowfast_nonlocal_settings)
from gcvideo.models.weights_file import WeightsFile, read_weights_file
from gcvideo.utils.io import CheckpointError, CheckpointMismatchError, atomic_save, refuse_existing

__all__ = ["load_pretrained", "build_model_from_checkpoint", "add_context_blocks", "inflate_imagenet_checkpoint",
           "LoadReport", "detect_format", "checked_keys"]

PURPOSES = ("finetune", "inference")


@dataclass
class LoadReport:
    source: str = ""
    format: str = ""  # "imagenet-2d" | "3d" | "pyslowfast" | "caffe2" | "mmaction2"
    mapped: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)  # model keys not in the checkpoint (context blocks)
    reinitialised: List[str] = field(default_factory=list)  # head keys with another class count
    unused: List[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    inflation: InflationReport = None
    # PySlowFast / Caffe2 / mmaction2: model key -> checkpoint key it was loaded from
    renamed: Dict[str, str] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)  # Caffe2 *_momentum / non-array entries
    filled: List[str] = field(default_factory=list)  # absent from the checkpoint, exact by construction
    notes: List[str] = field(default_factory=list)  # what could not be checked
    settings: Optional[NonLocalSettings] = None  # the writer's non-local settings, where it says

    def summary(self) -> str:
        if self.inflation is not None:
            return f"{self.source}: 2D ImageNet ResNet, inflated.\n{self.inflation.summary()}"
        kind = {"pyslowfast": "PySlowFast checkpoint", "caffe2": "Caffe2 checkpoint",
                "mmaction2": "mmaction2 checkpoint"}.get(self.format, "3D checkpoint")
        lines = [f"{self.source}: {kind}, {len(self.mapped)} keys loaded, {len(self.kept_init)} kept "
                 f"their initialisation, {len(self.reinitialised)} re-initialised, {len(self.unused)} unused"
                 + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        for name, keys in (("kept initialisation", self.kept_init), ("re-initialised (class count differs)",
                           self.reinitialised), ("unused checkpoint keys", self.unused),
                           ("skipped (optimizer state / not arrays)", self.skipped),
                           ("filled (BN counters kept / zero conv_out bias)", self.filled)):
            if keys:
                lines.append(f"  {name}: {_compact(keys)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def detect_format(sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> str:
    """The checkpoint kind from its key names: "imagenet-2d", "3d" (pytorchvideo/gcvideo),
    "pyslowfast", "caffe2" or "mmaction2"."""
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        return "imagenet-2d"
    if any(k.startswith("blocks.") for k in sd):
        return "3d"
    if any(k.startswith("s1.pathway0_stem.") or k.startswith("s2.pathway0_res") for k in sd):
        return "pyslowfast"
    if "conv1_w" in sd or any(k.startswith("res_conv1_bn_") or k.startswith("res2_0_branch") for k in sd):
        return "caffe2"
    if any(k.startswith("backbone.conv1.conv.") or k.startswith("backbone.layer1.") for k in sd):
        return "mmaction2"
    if any(k.startswith(("conv1.", "layer1.", "stem.", "stages.")) for k in sd):
        check_resnet_layout(sd)  # a 2D network of another layout: refused as such
    raise CheckpointMismatchError(
        f"checkpoint {source}: unrecognised checkpoint: expected a torchvision/timm ResNet (conv1.weight, "
        "layer1.*), a pytorchvideo/gcvideo 3D model (blocks.*), a PySlowFast model (s1.pathway0_stem.*), "
        "Caffe2 blobs (conv1_w, res2_0_branch2a_w) or an mmaction2 model (backbone.conv1.conv.weight); "
        "first keys: " + ", ".join(list(sd)[:5]))


def _nonlocal_settings(ck: WeightsFile, fmt: str) -> Optional[NonLocalSettings]:
    """What the checkpoint's writer says (or leaves open) about its non-local blocks."""
    if fmt == "pyslowfast":
        cfg = ck.meta.get("cfg")
        return pyslowfast_nonlocal_settings(cfg if isinstance(cfg, str) else None, ck.source)
    if fmt == "caffe2":  # the original non-local code: input pooled before phi/g, softmax scaled or dot product
        return NonLocalSettings("Caffe2", known=False, pool_position="before_conv",
                                options=[("dot_product", False), ("embedded_gaussian", True)])
    if fmt == "mmaction2":
        return mmaction2_nonlocal_settings(ck.meta, ck.state_dict)
    return None


_STAGE_BLOCK = re.compile(r"blocks\.(\d+)\.res_blocks\.(\d+)\.")


def _context_location(keys: Sequence[str], num_stages: int = 4) -> List[List[int]]:
    """CONTEXT.LOCATION of the context blocks that ``keys`` (gcvideo names) belong to."""
    loc: List[set] = [set() for _ in range(num_stages)]
    for k in keys:
        m = _STAGE_BLOCK.match(k)
        if m and ".context." in k and 1 <= int(m.group(1)) <= num_stages:
            loc[int(m.group(1)) - 1].add(int(m.group(2)))
    return [sorted(s) for s in loc]


def _is_backbone_key(key: str, model: nn.Module) -> bool:
    """A gcvideo-named key of the stem or a residual block (not the head, not a context block)."""
    head = f"blocks.{len(model.blocks) - 1}."
    return key.startswith("blocks.") and not key.startswith(head) and ".context." not in key


def _load(model: nn.Module, ck: WeightsFile, purpose: str) -> LoadReport:
    """Rename (foreign formats) or inflate (2D), check against the model, then load strictly."""
    name, sd = ck.source, ck.state_dict
    rep = LoadReport(source=name, format=detect_format(sd, name), skipped=list(ck.skipped))
    if rep.format == "imagenet-2d":
        if purpose == "inference":
            raise CheckpointMismatchError(f"checkpoint {name} is a 2D ImageNet ResNet, not a trained video model")
        rep.inflation = InflationReport()
        model.load_state_dict(inflate_state_dict(sd, model, rep.inflation), strict=True)
        return rep
    untranslated: List[str] = []
    if rep.format in ("pyslowfast", "caffe2", "mmaction2"):
        sd, rep.renamed, untranslated = convert_state_dict(sd, rep.format, head_index=len(model.blocks) - 1,
                                                           target=model.state_dict())
        rep.filled += [k for k, src in rep.renamed.items() if src == "(zero)"]
        rep.settings = _nonlocal_settings(ck, rep.format)
        rep.notes += check_nonlocal_semantics(model, sd, rep.settings, name)
    target = model.state_dict()
    sd = layernorm_as_vectors(model, sd)  # GC LayerNorm weights saved as (Cr, 1, 1[, 1])
    out: Dict[str, torch.Tensor] = {}
    head = f"blocks.{len(model.blocks) - 1}."
    sd = dict(sd)
    for k, v in target.items():
        if k in sd and sd[k].shape != v.shape and ".context." in k and sd[k].numel() == v.numel():
            sd[k] = sd[k].reshape(v.shape)  # a context block's LayerNorm saved as (C/r, 1, 1, 1) or (C/r,)
        if k in sd and sd[k].shape == v.shape:
            out[k] = sd[k].to(v.dtype)
            rep.mapped.append(k)
        elif k in sd and k.startswith(head):
            out[k] = v
            rep.reinitialised.append(k)
        elif k not in sd and k.endswith(".num_batches_tracked") and rep.format == "caffe2" and (
                k[:-len("num_batches_tracked")] + "weight") in sd:
            out[k] = v  # Caffe2 BNs have no counter; eval-mode outputs do not depend on it
            rep.filled.append(k)
        elif k not in sd and _is_new_module_key(k, model):
            out[k] = v
            rep.kept_init.append(k)
        elif k in sd:
            src = f" (from {rep.renamed[k]})" if k in rep.renamed else ""
            raise CheckpointMismatchError(f"checkpoint {name}: shape mismatch for {k}{src}: checkpoint "
                                          f"{tuple(sd[k].shape)} vs model {tuple(v.shape)}")
        else:
            raise CheckpointMismatchError(f"checkpoint {name} has no weights for backbone key {k}")
    extra = [k for k in sd if k not in target]
    rep.unused = [rep.renamed.get(k, k) for k in extra] + untranslated
    extra_backbone = [rep.renamed.get(k, k) for k in extra if _is_backbone_key(k, model)]
    if extra_backbone:
        raise CheckpointMismatchError(
            f"checkpoint {name} has {len(extra_backbone)} backbone weights with no place in the model of this "
            f"config, e.g. {_compact(extra_backbone, 3)}: a deeper network than the config's (MODEL.DEPTH / "
            "MODEL.STAGE_DEPTHS)?")
    if purpose == "inference":
        _check_complete(rep, ck.state_dict, extra, untranslated, name)
    model.load_state_dict(out, strict=True)
    return rep


def _check_complete(rep: LoadReport, source_sd: Mapping[str, torch.Tensor], extra: List[str], untranslated: List[str],
                    name: str) -> None:
    """Inference: nothing may stay at its initialisation and every checkpoint weight must be used."""
    hint = f"; set {rep.settings.gcvideo_opts()}" if rep.settings is not None and rep.settings.known else ""
    if rep.reinitialised:
        raise CheckpointMismatchError(
            f"checkpoint {name}: the classifier has another class count than the model of this config "
            f"(MODEL.NUM_CLASSES): {', '.join(rep.reinitialised)}")
    if rep.kept_init:
        loc = _context_location(rep.kept_init)
        where = f" (context blocks at CONTEXT.LOCATION {loc})" if any(loc) else ""
        raise CheckpointMismatchError(
            f"checkpoint {name} has no weights for {len(rep.kept_init)} keys of this config's model, e.g. "
            f"{_compact(rep.kept_init, 4)}{where}; was it trained with another CONTEXT.* setting?{hint}")
    # single numbers stored beside the weights (a Caffe2 'lr' blob) are not weights
    unused_weights = [rep.renamed.get(k, k) for k in extra] + [k for k in untranslated if source_sd[k].numel() > 1]
    if unused_weights:
        loc = _context_location(extra)
        where = (f" (context blocks at CONTEXT.LOCATION {loc}, which the model of this config does not have)"
                 if any(loc) else "")
        raise CheckpointMismatchError(
            f"checkpoint {name} has {len(unused_weights)} weights that map to nothing in the model of this "
            f"config: {_compact(unused_weights, 6)}{where}{hint}")


def load_pretrained(model: nn.Module, source: Union[str, Mapping], verbose: bool = False,
                    purpose: str = "finetune") -> LoadReport:
    """Load weights from ``source`` (a path read safely, or a state dict / checkpoint dict) into ``model``.

    ``purpose``: "finetune" (new modules keep their initialisation, unused keys are reported) or
    "inference" (every weight must fit exactly). Returns a :class:`LoadReport`.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}: expected one of {PURPOSES}")
    rep = _load_named(model, read_weights_file(source), purpose)
    if verbose:
        print(rep.summary())
    return rep


def _load_named(model: nn.Module, ck: WeightsFile, purpose: str) -> LoadReport:
    """``_load`` with every error naming the checkpoint."""
    try:
        return _load(model, ck, purpose)
    except CheckpointError as e:
        if ck.source in str(e):
            raise
        raise type(e)(f"checkpoint {ck.source}: {e}") from e


def build_model_from_checkpoint(cfg, checkpoint: Union[str, Mapping], allow: Sequence[str] = ()) -> nn.Module:
    """The model of ``cfg`` with every weight from ``checkpoint`` (any format above), in eval mode on
    the CPU. Unlike fine-tuning, nothing may stay at its initialisation and nothing may be left over:
    a 2D ImageNet file, missing or extra context-block weights or a head with another class count are
    errors that name the keys (and, for a PySlowFast ``.pyth``, the gcvideo settings it needs). A
    gcvideo checkpoint's stored config must agree with ``cfg`` on ``checked_keys`` (those in ``allow``,
    e.g. set explicitly on the command line, may differ)."""
    model = build_model(cfg)
    ck = read_weights_file(checkpoint)
    _check_saved_config(cfg, ck.meta.get("config"), ck.source, allow)  # (before the weights: it names keys)
    _load_named(model, ck, "inference")
    return model.eval()


# Settings that change what a checkpoint's test views mean (DATA.*) or what its weights compute
# (MODEL.*, CONTEXT.*) while the weights still fit: a gcvideo checkpoint stores its config, and a
# config that tests, predicts with or exports it must agree on them.
_VIEW_KEYS = ["DATA.NUM_FRAMES", "DATA.SAMPLING_RATE", "DATA.TARGET_FPS", "DATA.TEST_CROP_SIZE", "DATA.MEAN",
              "DATA.STD"]
_MODEL_KEYS = ["MODEL.STAGE_DEPTHS", "MODEL.NUM_CLASSES", "MODEL.WIDTH", "MODEL.STEM_KERNEL",
               "MODEL.TEMPORAL_KERNELS", "MODEL.HEAD_POOL", "MODEL.BN_EPS", "CONTEXT.TYPE"]
_CONTEXT_KEYS = ["CONTEXT.LOCATION", "CONTEXT.POSITION", "CONTEXT.RATIO", "CONTEXT.POOLING", "CONTEXT.TRANSFORM",
                 "CONTEXT.NORM", "CONTEXT.FUSION", "CONTEXT.ATT_BIAS"]


def checked_keys(cfg, saved: Mapping) -> List[str]:
    """The keys of ``cfg`` that must equal those of ``saved`` (a checkpoint's stored config as a dict)."""
    keys = _VIEW_KEYS + _MODEL_KEYS
    if not (saved.get("MODEL") or {}).get("STAGE_DEPTHS"):
        keys.append("MODEL.DEPTH")
    if cfg.MODEL.HEAD_POOL != "global":  # its pool is sized for the training clip
        keys.append("DATA.TRAIN_CROP_SIZE")
    if cfg.CONTEXT.TYPE != "none":
        keys += _CONTEXT_KEYS
    if (saved.get("CONTEXT") or {}).get("TYPE") == "nl" and cfg.CONTEXT.TYPE == "nl":
        keys += ["CONTEXT.NL_INSTANTIATION", "CONTEXT.NL_INNER_RATIO", "CONTEXT.NL_POOL", "CONTEXT.NL_POOL_POSITION"]
        if cfg.CONTEXT.NL_INSTANTIATION == "embedded_gaussian":
            keys.append("CONTEXT.NL_SCALE")
    return keys


def _comparable(key: str, value, cfg):
    if key == "CONTEXT.LOCATION":  # "all" and [all, all, all, all] are the same blocks
        return context_indices(value, stage_depths(cfg))
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_saved_config(cfg, saved_text, source: str, allow: Sequence[str] = ()) -> None:
    """A gcvideo checkpoint stores its config: ``checked_keys`` must be this config's too (except
    ``allow``); a difference is a ``CheckpointMismatchError`` listing every differing key."""
    if not isinstance(saved_text, str):
        return
    try:
        saved = yaml.safe_load(saved_text)
    except yaml.YAMLError:
        return
    if not isinstance(saved, Mapping) or not isinstance(saved.get("CONTEXT"), Mapping):
        return
    wrong = []
    for key in checked_keys(cfg, saved):
        sec, name = key.split(".")
        if key in allow or name not in (saved.get(sec) or {}):
            continue
        want, have = saved[sec][name], cfg[sec][name]
        if _comparable(key, want, cfg) != _comparable(key, have, cfg):
            wrong.append((key, want, have))
    if wrong:
        raise CheckpointMismatchError(
            f"checkpoint {source} was trained with "
            + ", ".join(f"{k} = {w!r}" for k, w, _ in wrong) + " but this config has "
            + ", ".join(f"{k} = {h!r}" for k, _, h in wrong)
            + ": the same weights would compute another function or see other views; leave --config out to "
            "use the checkpoint's own config, or set "
            + " ".join(f"{k} {chr(39) + str(list(w)) + chr(39) if isinstance(w, (list, tuple)) else w}"
                       for k, w, _ in wrong))


def add_context_blocks(cfg, baseline: Union[str, Mapping], verbose: bool = False):
    """Build the model of ``cfg`` (with context blocks) and load a trained baseline into it.

    The paper's recipe (Y. Cao et al., "Global Context Networks", TPAMI 2020, Sec. 5.3): train a
    baseline, insert blocks, fine-tune. Context blocks are not in the baseline checkpoint and keep
    their initialisation; with ``CONTEXT.ZERO_INIT`` (add fusion: last transform conv zero;
    non-local: BN scale zero) the new model computes exactly the baseline's function. ``baseline``
    is any file or state dict :func:`load_pretrained` reads. Returns (model, LoadReport).
    """
    model = build_model(cfg)
    report = load_pretrained(model, baseline, verbose=verbose)
    return model, report


def inflate_imagenet_checkpoint(src: str, config: str, dst: str, opts: Optional[Sequence[str]] = None,
                                overwrite: bool = False) -> InflationReport:
    """Read a 2D ResNet checkpoint, inflate it for the model of ``config``, write ``dst`` atomically."""
    refuse_existing(dst, overwrite)
    cfg = load_cfg(config, opts)
    model = build_model(cfg)
    ck = read_weights_file(src)
    report = InflationReport()
    try:
        sd3 = inflate_state_dict(ck.state_dict, model, report)
    except CheckpointError as e:
        raise type(e)(f"checkpoint {src}: {e}") from e
    model.load_state_dict(sd3, strict=True)  # checks the result fits before writing
    atomic_save({"model": sd3, "inflated_from": src, "config": cfg.dump()}, dst)
    print(report.summary())
    print(f"wrote {dst}")
    return report
