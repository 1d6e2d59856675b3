"""All configuration defaults of gcvideo, in one place.

Every key is defined once below with a comment. YAML files under ``configs/``
are flat overrides of these defaults, and ``KEY VALUE`` pairs from the command
line override both. ``load_cfg`` merges, coerces and validates: an unknown key,
a wrong type or an impossible value fails before any work starts, with a
message that names the key, the value and what is allowed.

Only the ``build_*`` functions read a config; modules take keyword arguments.
"""
from __future__ import annotations

import ast
import difflib
import math
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import yaml
from fvcore.common.config import BASE_KEY, CfgNode

from gcvideo.data.annotations import CLIP_LAYOUTS, FORMATS as ANNOTATION_FORMATS
from gcvideo.data.augment import MAX_MAGNITUDE
from gcvideo.data.decoder import BACKENDS as DECODERS
from gcvideo.layers import (CONTEXT_POSITIONS, CONTEXT_PRESETS, CONTEXT_TYPES, FUSIONS, NL_INSTANTIATIONS,
                            NL_POOL_POSITIONS, NORMS, POOLINGS, TRANSFORMS)
from gcvideo.layers.losses import LOSSES
from gcvideo.data.sampling import VIEW_PROTOCOLS
from gcvideo.utils.errors import UserError

_C = CfgNode()

# Folder for checkpoints, logs, reports (any iopath location). Left at this default with a
# config file, load_cfg uses runs/<config file name> instead, so that two configs never share
# (and auto-resume from) one folder.
_C.OUTPUT_DIR = "runs/default"
# Global random seed (python, numpy, torch; data workers derive theirs from it).
_C.SEED = 0
# Device: "auto" (cuda when available, else cpu), "cpu" or "cuda".
_C.DEVICE = "auto"

# ---------------------------------------------------------------------------
# Model: Slow-only ResNet-3D
# ---------------------------------------------------------------------------
_C.MODEL = CfgNode()
# ResNet depth: 50 ([3,4,6,3] bottlenecks) or 101 ([3,4,23,3]).
_C.MODEL.DEPTH = 50
# Override the blocks per stage (4 ints); empty = from MODEL.DEPTH. For small test/toy nets.
_C.MODEL.STAGE_DEPTHS = []
# Number of output classes.
_C.MODEL.NUM_CLASSES = 400
# Stem width; stage widths follow as 4x, 8x, 16x, 32x this (64 = standard ResNet).
_C.MODEL.WIDTH = 64
# Stem conv kernel (T, H, W); Slow-only uses 1x7x7.
_C.MODEL.STEM_KERNEL = [1, 7, 7]
# Temporal kernel size of conv_a (first 1x1) in every bottleneck, per stage res2..res5.
_C.MODEL.TEMPORAL_KERNELS = [1, 1, 3, 3]
# Dropout before the classification layer.
_C.MODEL.DROPOUT = 0.5
# BatchNorm momentum (PyTorch convention) and epsilon.
_C.MODEL.BN_MOMENTUM = 0.1
_C.MODEL.BN_EPS = 1e-5
# Initialise the last BN of every bottleneck to zero scale (PySlowFast ZERO_INIT_FINAL_BN).
_C.MODEL.ZERO_INIT_FINAL_BN = False
# Classifier pooling (docs/interop.md): "global" (average over all positions, any input size gives one
# vector) | "train_crop_logits" (pytorchvideo's slow_r50: an average pool sized for the training clip,
# (NUM_FRAMES, TRAIN_CROP_SIZE/32, TRAIN_CROP_SIZE/32), stride 1; larger test crops give several
# positions whose logits are averaged) | "train_crop_probs" (PySlowFast: the same pool; in eval each
# position's softmax is averaged and the model returns the log of that mean, so softmax(output) is it).
_C.MODEL.HEAD_POOL = "global"
# Training loss, one of gcvideo/layers/losses.py's LOSSES: "cross_entropy" (the papers') |
# "soft_cross_entropy" (targets that are distributions: MIXUP.ENABLE needs a loss with soft_targets).
# Validation and test compute no loss.
_C.MODEL.LOSS = "cross_entropy"

# ---------------------------------------------------------------------------
# Context blocks: the global-context family (GC, SNL, SE, ablations) and non-local
# ---------------------------------------------------------------------------
_C.CONTEXT = CfgNode()
# Block type: "none", a preset of gcvideo.layers.CONTEXT_PRESETS ("gc" | "snl" | "se") or "nl"
# (the allowed names: gcvideo.layers.CONTEXT_TYPES).
_C.CONTEXT.TYPE = "none"
# Per stage res2..res5: list of 0-based block indices that get a block, or "all".
_C.CONTEXT.LOCATION = [[], [], [], []]
# Where in a bottleneck: "auto" (pre_add for gc/snl/se, post_relu for nl),
# "pre_add" (after the last 1x1 conv + BN, before the residual add), "post_relu"
# (after the block's output ReLU).
_C.CONTEXT.POSITION = "auto"
# Bottleneck ratio r of the transform (C -> C*r); 1/4 on Kinetics, 1/16 on COCO/ImageNet.
_C.CONTEXT.RATIO = 0.25
# Ablations (paper Tables 2-4); "auto" = the type's own choice.
# Context modeling: "att" (attention pooling) | "avg" (global average pooling).
_C.CONTEXT.POOLING = "auto"
# Transform: "bottleneck" (C->Cr->C) | "linear" (one C->C conv, as SNL).
_C.CONTEXT.TRANSFORM = "auto"
# Norm inside the bottleneck transform: "layernorm" | "none".
_C.CONTEXT.NORM = "auto"
# Fusion: "add" (broadcast add) | "mul" (sigmoid, channel-wise multiply).
_C.CONTEXT.FUSION = "auto"
# Bias on the C->1 attention conv (the softmax makes it redundant; the paper has it).
_C.CONTEXT.ATT_BIAS = True
# Zero-initialise the last transform conv (add fusion) so blocks start as identity.
_C.CONTEXT.ZERO_INIT = True
# Allow the fused path of the GC block (gcvideo/layers/fused: same numbers, faster on CPUs);
# False always runs the reference ops.
_C.CONTEXT.FUSED = True
# Non-local: "gaussian" | "embedded_gaussian" | "dot_product" | "concat".
_C.CONTEXT.NL_INSTANTIATION = "embedded_gaussian"
# Non-local inner channels as a fraction of C.
_C.CONTEXT.NL_INNER_RATIO = 0.5
# Max-pool kernel (T, H, W) subsampling the key/value paths; [] = none.
_C.CONTEXT.NL_POOL = [1, 2, 2]
# Where the key/value subsampling happens: "after_conv" (phi/g convs, then max pool; mmaction2) or
# "before_conv" (max-pool the block input, then phi/g; the original Caffe2 non-local code and
# PySlowFast: needed to run their checkpoints).
_C.CONTEXT.NL_POOL_POSITION = "after_conv"
# Scale embedded_gaussian logits by 1/sqrt(inner channels) (PySlowFast and the original Caffe2
# code do; the paper's equations do not).
_C.CONTEXT.NL_SCALE = False

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
_C.DATA = CfgNode()
# Folder with the annotation files (train/val/test names below are relative to it).
_C.DATA.PATH_TO_DATA_DIR = ""
# Prefix joined to every video path from the annotations.
_C.DATA.PATH_PREFIX = ""
# Per-split prefixes used instead of PATH_PREFIX when set ("" = PATH_PREFIX), for copies whose
# splits live in different folders (mmaction2 videos_train/ and videos_val/, official CSVs).
_C.DATA.TRAIN_PATH_PREFIX = ""
_C.DATA.VAL_PATH_PREFIX = ""
_C.DATA.TEST_PATH_PREFIX = ""
# Annotation file names per split, relative to PATH_TO_DATA_DIR (or absolute).
_C.DATA.TRAIN_FILE = "train.csv"
_C.DATA.VAL_FILE = "val.csv"
_C.DATA.TEST_FILE = "test.csv"
# Annotation format: "auto" (detected from the first entry line; a line that could be a list or
# a CSV is an error asking for this key) | "slowfast" | "mmaction" | "kinetics_csv" (ANNOTATION_FORMATS).
_C.DATA.FORMAT = "auto"
# Field separator of video lists (PySlowFast's PATH_LABEL_SEPARATOR); "" = whitespace (TAB if a line has one).
_C.DATA.PATH_LABEL_SEPARATOR = ""
# Class-name list, one a line (line i = class i); "" = labels must be integers. A relative path
# that does not exist from the working directory is looked up among the files gcvideo ships
# (datasets/kinetics400/label_map.txt works from anywhere, installed or from a checkout).
_C.DATA.LABEL_MAP = ""
# Official-CSV layout: clips under {split folder}/{class}/ ("class") or flat ("flat"), or "auto".
_C.DATA.CLIP_LAYOUT = "auto"
# Decoder backend: "pyav" (exact on every file, fastest in bench/results/decode.md) | "decord" |
# "torchcodec" (pip install torchcodec + FFmpeg's shared libraries). decord and torchcodec are used
# for a file only where their frame table matches PyAV's packet index; else PyAV (logged once).
_C.DATA.DECODER = "pyav"
# Where frames are decoded: "cpu", or "cuda" (DECODER torchcodec only: NVDEC, frames and the
# augmentation on the GPU, in the main process: needs DATA.NUM_WORKERS 0 and DATA.PIN_MEMORY False).
_C.DATA.DECODE_DEVICE = "cpu"
# Decoding threads per video reader (1 per DataLoader worker; 0 = library default/auto).
_C.DATA.DECODER_THREADS = 1
# Frames per clip and the stride between them (at TARGET_FPS): 8x8.
_C.DATA.NUM_FRAMES = 8
_C.DATA.SAMPLING_RATE = 8
# Frame rate in which the sampling stride is measured (PySlowFast: 30).
_C.DATA.TARGET_FPS = 30
# Training short-side scale jitter [min, max] and crop size.
_C.DATA.TRAIN_JITTER_SCALES = [256, 320]
_C.DATA.TRAIN_CROP_SIZE = 224
# Test: short side resized to TEST_CROP_SIZE, then crops of that size.
_C.DATA.TEST_CROP_SIZE = 256
# Random horizontal flip in training.
_C.DATA.RANDOM_FLIP = True
# Label to use when a clip is flipped horizontally: list of [from, to] pairs ([] = unchanged).
_C.DATA.FLIP_LABEL_PAIRS = []
# Probability of time reversal in training (0 = off); needs REVERSE_LABEL_PAIRS for motion classes.
_C.DATA.REVERSE_PROB = 0.0
# Label to use when a clip is reversed in time: list of [from, to] pairs.
_C.DATA.REVERSE_LABEL_PAIRS = []
# Per-channel normalisation (RGB, in [0, 1] units).
_C.DATA.MEAN = [0.45, 0.45, 0.45]
_C.DATA.STD = [0.225, 0.225, 0.225]
# Validation/test items as uint8 views, normalised (MEAN/STD) on the device by the test loop:
# a 30-view Kinetics item is 47 MB instead of 189 MB in float32. False: float32 items.
_C.DATA.EVAL_UINT8 = True
# Training items as uint8 clips, normalised (MEAN/STD) on the device by the training loop (the same
# numbers as float32 items; 4x less to build, pass between processes and copy). False: float32 items.
_C.DATA.TRAIN_UINT8 = True
# Clips per training video (PySlowFast's AUG.NUM_SAMPLE, "repeated augmentation"): one open and one
# decode of the window give K clips with their own scale, crop, flip (and reversal); all K go into
# the batch, so a step trains TRAIN.BATCH_SIZE x K clips of TRAIN.BATCH_SIZE videos (docs/data.md).
_C.DATA.NUM_SAMPLES = 1
# With NUM_SAMPLES K even: clip 2i+1 of a video is clip 2i reversed in time (same scale, crop and
# flip; label through REVERSE_LABEL_PAIRS), so each pair differs only in the direction of time and a
# feature even in time adds nothing to the difference of their logits (docs/data.md). False: every
# clip draws its own reversal (REVERSE_PROB).
_C.DATA.PAIR_REVERSED = False
# Training stops if more than this share of videos failed to decode.
_C.DATA.MAX_BROKEN_FRACTION = 0.05
# Bounds on a video's frame size, so that one hostile file is a failed video ("bad_size: ...")
# instead of the end of a run: at most this many pixels per decoded frame (4096 x 2304)...
_C.DATA.MAX_FRAME_PIXELS = 4096 * 2304
# ...and at most this aspect ratio (long side / short side): resizing the short side of a
# 4000x2 video to 256 pixels would make frames 512000 pixels wide (12 GB for 30 views).
_C.DATA.MAX_ASPECT_RATIO = 10.0
# Bounds on what the config asks of memory, checked before any work (gcvideo/data/item_bytes.py): the
# bytes of one item (train, val or test: its frames resized to the crop or jitter scale at up to
# MAX_ASPECT_RATIO, and its clips or views)... The Kinetics 8x8 configs need 0.20 GB (30-view test
# item, uint8); 32 frames 0.82 GB.
_C.DATA.MAX_ITEM_BYTES = 4 * 10 ** 9
# ...and of one batch of one process (the collated clips and their float32 model input; not the
# model's activations): Kinetics 8x8, 4 videos x 30 views: 0.94 GB (32 frames: 3.77 GB); 64
# training clips: 0.39 GB.
_C.DATA.MAX_BATCH_BYTES = 8 * 10 ** 9
# DataLoader workers per process (at most usable cores / processes on the machine are run:
# gcvideo.utils.threads.loader_workers) and pinned memory.
_C.DATA.NUM_WORKERS = 4
_C.DATA.PIN_MEMORY = True
# Training batches each DataLoader worker prepares ahead (DataLoader prefetch_factor; used with
# NUM_WORKERS > 0). The training workers persist for the whole run (gcvideo.engine.loader).
_C.DATA.PREFETCH_FACTOR = 2

# ---------------------------------------------------------------------------
# Training augmentation after crop and flip (gcvideo/data/augment.py, docs/data.md); all off by default
# ---------------------------------------------------------------------------
_C.AUG = CfgNode()
# RandAugment on training clips: RAND_AUGMENT_N ops per clip at magnitude RAND_AUGMENT_M (0..10, the
# timm / PySlowFast scale: AUG.AA_TYPE "rand-m9-n2" is N 2, M 9), the same ops on every frame.
_C.AUG.RAND_AUGMENT = False
_C.AUG.RAND_AUGMENT_N = 2
_C.AUG.RAND_AUGMENT_M = 9
# Random erasing probability per training clip (PySlowFast's AUG.RE_PROB, 0.25 there; 0 = off): one
# box on every frame, filled with the DATA.MEAN colour.
_C.AUG.RE_PROB = 0.0

# ---------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------
_C.SOLVER = CfgNode()
# Base learning rate for SOLVER.REFERENCE_BATCH_SIZE clips; scaled linearly with the global batch.
# The scaled LR must be finite, > 0 and at most MAX_LR.
_C.SOLVER.BASE_LR = 0.1
# The largest learning rate accepted (not a key): 100x the Kinetics recipes' 0.1 and 3x the largest
# linearly scaled SGD LR published for ResNets (3.2 at batch 8192, Goyal et al. 2017); beyond it
# training only diverges, and 1e300 overflowed to a traceback after the output folder was written.
MAX_LR = 10.0
# Global batch the base LR refers to (PySlowFast Slow 8x8: 0.1 at 64).
_C.SOLVER.REFERENCE_BATCH_SIZE = 64
# Epochs of training and of linear warmup (shorter than training: 0 <= WARMUP_EPOCHS < MAX_EPOCH).
_C.SOLVER.MAX_EPOCH = 196
_C.SOLVER.WARMUP_EPOCHS = 34.0
# Learning rate at the start of warmup, as a fraction of the (scaled) base LR.
_C.SOLVER.WARMUP_START_FACTOR = 0.1
# Final learning rate of the cosine, as a fraction of the (scaled) base LR.
_C.SOLVER.COSINE_END_FACTOR = 0.0
# Optimizer: "sgd" (momentum, Nesterov; PySlowFast's ResNet recipes) or "adamw" (decoupled weight
# decay, betas SOLVER.BETAS; PySlowFast's MViT recipes).
_C.SOLVER.OPTIMIZING_METHOD = "sgd"
OPTIMIZERS = ("sgd", "adamw")  # the values SOLVER.OPTIMIZING_METHOD takes (gcvideo/engine/optim.py builds them)
# AdamW's (beta1, beta2).
_C.SOLVER.BETAS = [0.9, 0.999]
# SGD momentum, Nesterov, weight decay.
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = True
_C.SOLVER.WEIGHT_DECAY = 1e-4
# No weight decay on normalisation layers and biases.
_C.SOLVER.ZERO_WD_NORM_BIAS = True
# Clip the global gradient norm to this value (0 = off).
_C.SOLVER.CLIP_GRAD_NORM = 0.0

# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
_C.TRAIN = CfgNode()
# Global batch size: the videos of one optimizer step, all processes and micro-batches together
# (PySlowFast's global TRAIN.BATCH_SIZE; mmaction2's per-GPU batch_size x GPUs x accumulative_counts).
# Each process gets BATCH_SIZE / world size; the LR (SOLVER.REFERENCE_BATCH_SIZE) and the iterations
# of an epoch follow this number, whatever ACCUM_STEPS is.
_C.TRAIN.BATCH_SIZE = 64
# Gradient accumulation: each process runs its BATCH_SIZE / world size videos as ACCUM_STEPS
# micro-batches, adds up their gradients (loss x micro-batch share, so the sum is the whole batch's
# mean-loss gradient; DDP all-reduces once, after the last) and steps once: the paper's batch 64 on
# one GPU is TRAIN.BATCH_SIZE 64 TRAIN.ACCUM_STEPS 8 (8 videos at a time). Memory is one
# micro-batch's; BatchNorm normalises with each micro-batch's statistics (the only difference to
# the big batch; TRAIN.PRECISE_BN_BATCHES recomputes them). BATCH_SIZE must be divisible by
# world size x ACCUM_STEPS. 1 = off.
_C.TRAIN.ACCUM_STEPS = 1
# Validate every N epochs (0 = never during training).
_C.TRAIN.EVAL_PERIOD = 10
# Views used for validation during training: temporal clips x spatial crops.
_C.TRAIN.EVAL_VIEWS = [1, 1]
# Save a checkpoint every N epochs and every N iterations (0 = off).
_C.TRAIN.CHECKPOINT_PERIOD = 1
_C.TRAIN.CHECKPOINT_ITERS = 0
# How many recent checkpoints to keep.
_C.TRAIN.KEEP_LAST = 3
# Also keep the checkpoint of the best validation top-1 so far as checkpoints/checkpoint_best.pth
# (mmaction2's save_best; needs TRAIN.EVAL_PERIOD > 0); test it with test_net.py --checkpoint best.
_C.TRAIN.KEEP_BEST = True
# Resume from the newest complete checkpoint in OUTPUT_DIR.
_C.TRAIN.AUTO_RESUME = True
# Initial weights: inflated ImageNet or pytorchvideo/PySlowFast checkpoint ("" = random).
_C.TRAIN.INIT_FROM = ""
# Mixed precision: "none" | "bf16" | "fp16" (fp16 uses a grad scaler) | "auto": bf16 on GPUs that
# support it and on CPUs with bf16 matrix units (AMX / AVX512-BF16) where it measures faster, else fp32.
_C.TRAIN.MIXED_PRECISION = "none"
# channels_last_3d memory format for the model and inputs.
_C.TRAIN.CHANNELS_LAST = True
# SyncBatchNorm across processes.
_C.TRAIN.SYNC_BN = False
# CPU runs: glibc malloc keeps freed memory for reuse instead of page-faulting fresh pages every
# step (gcvideo/utils/malloc.py; left alone where jemalloc/tcmalloc is preloaded).
_C.TRAIN.CPU_KEEP_FREED_MEMORY = True
# CPU runs: intra-op threads of the main process (training and testing). 0 = automatic: the
# usable cores / processes on this machine (LOCAL_WORLD_SIZE) - DATA.NUM_WORKERS, at least 1,
# so the model and the loader workers do not take turns on the same cores; left as is where
# OMP_NUM_THREADS is set (gcvideo/utils/threads.py). N > 0: N threads. CUDA runs: unused.
_C.TRAIN.CPU_THREADS = 0
# Recompute BN statistics on this many training batches before evaluation (0 = off).
_C.TRAIN.PRECISE_BN_BATCHES = 0
# torch.compile (mode default) of the model for the training step and the evaluation (validation,
# final test); checkpoints hold the plain module's weights, so compiled and eager runs resume each
# other. The first steps compile (minutes for a Slow-R50); it pays on GPUs. Off by default: on CPUs
# the compile costs minutes and the step gains little (bench/results/compile.md).
_C.TRAIN.COMPILE = False
# Log a JSON line every N iterations.
_C.TRAIN.LOG_PERIOD = 10
# Label smoothing e of the training loss: target (1 - e) one-hot + e / NUM_CLASSES (0 = off). With
# MIXUP.ENABLE use MIXUP.LABEL_SMOOTHING instead.
_C.TRAIN.LABEL_SMOOTHING = 0.0
# Run the full test (TEST.*) after training.
_C.TRAIN.TEST_AT_END = True
# Deterministic algorithms (for exact resume checks; slower).
_C.TRAIN.DETERMINISTIC = False

# ---------------------------------------------------------------------------
# Mixup / CutMix of training clips (gcvideo/data/mixup.py; PySlowFast's MIXUP.* keys)
# ---------------------------------------------------------------------------
_C.MIXUP = CfgNode()
# Mix each training batch with itself reversed (row i with row B-1-i, on the device); needs
# MODEL.LOSS soft_cross_entropy. Validation and test are never mixed.
_C.MIXUP.ENABLE = False
# Mixup: lam ~ Beta(ALPHA, ALPHA), clips lam * x + (1 - lam) * x.flip(0) (0 = no mixup).
_C.MIXUP.ALPHA = 0.8
# CutMix: lam ~ Beta(CUTMIX_ALPHA, CUTMIX_ALPHA), one box of area ~(1 - lam) cut into every frame of the
# clip from its partner; lam is then the kept area fraction (0 = no CutMix).
_C.MIXUP.CUTMIX_ALPHA = 1.0
# Probability that a batch is mixed at all.
_C.MIXUP.PROB = 1.0
# With both ALPHA and CUTMIX_ALPHA > 0: probability of CutMix instead of mixup for a batch.
_C.MIXUP.SWITCH_PROB = 0.5
# Label smoothing of the mixed targets (TRAIN.LABEL_SMOOTHING must stay 0 with mixup).
_C.MIXUP.LABEL_SMOOTHING = 0.1

# ---------------------------------------------------------------------------
# Testing
# ---------------------------------------------------------------------------
_C.TEST = CfgNode()
# Temporal clips per video and spatial crops per clip (10 x 3 = 30 views).
_C.TEST.NUM_ENSEMBLE_VIEWS = 10
_C.TEST.NUM_SPATIAL_CROPS = 3
# Whose test views (frame indices, resize, crop places) the test, predict and validation views use:
# "gcvideo" (sampling.py/transforms.py docstrings) | "pyslowfast" | "pytorchvideo" | "mmaction2": as
# that peer's own test code computes them, to reproduce the number published with its checkpoint
# (docs/interop.md). pyslowfast and pytorchvideo resize normalised float frames: float32 views
# whatever DATA.EVAL_UINT8.
_C.TEST.VIEW_PROTOCOL = "gcvideo"
# How view scores combine: "prob_mean" | "logit_mean" | "prob_max".
_C.TEST.ENSEMBLE_METHOD = "prob_mean"
# Videos per batch per process.
_C.TEST.BATCH_SIZE = 4
# Checkpoint to evaluate ("" = the newest in OUTPUT_DIR, "best" = OUTPUT_DIR's TRAIN.KEEP_BEST checkpoint).
_C.TEST.CHECKPOINT = ""

# ---------------------------------------------------------------------------
# Several processes (torchrun)
# ---------------------------------------------------------------------------
_C.DIST = CfgNode()
# Seconds a collective (gradient all-reduce, barrier) waits for the other processes before the
# run fails with an error naming the ranks that did not come (the process group's timeout). A
# training step that takes 10x the last steps' median (at least 60 s, at most half of this)
# logs a warning naming them first (gcvideo/engine/distributed.py: StepWatch).
_C.DIST.TIMEOUT = 1800.0


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


class ConfigError(UserError, ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


# ---------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------
# Element types of the list keys whose defaults are empty (the others follow their default's elements).
_LIST_ITEMS = {"MODEL.STAGE_DEPTHS": int, "DATA.FLIP_LABEL_PAIRS": "pair", "DATA.REVERSE_LABEL_PAIRS": "pair",
               "CONTEXT.LOCATION": None}  # LOCATION: checked in validate_cfg (lists or "all")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _declared(key: str):
    """The default of ``key`` ("SECTION.NAME") as declared above, or None for keys added elsewhere."""
    node = _C
    for part in key.split("."):
        node = node.get(part) if isinstance(node, CfgNode) else None
    return node


def _coerce(new, old, key: str, source: str):
    """Check ``new`` against the declared default ``old``; allow int->float and list<->tuple."""
    def bad(what: str):
        return ConfigError(f"{source}: {key} = {new!r} {what}; expected {type(old).__name__} like the "
                           f"default {old!r}")

    if new is None:
        raise bad("is empty (null/None)")
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        kind = _LIST_ITEMS.get(key, type(old[0]) if old else None)
        out = list(new)
        for i, x in enumerate(out):
            if kind is int and not _is_int(x):
                raise bad(f"has element {x!r} at position {i}, not an integer")
            if kind is float:
                if not (_is_int(x) or isinstance(x, float)):
                    raise bad(f"has element {x!r} at position {i}, not a number")
                out[i] = float(x)
            if kind == "pair" and not (isinstance(x, (list, tuple)) and len(x) == 2 and all(_is_int(v) for v in x)):
                raise bad(f"has element {x!r} at position {i}, not a pair of class indices [a, b]")
        return out
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif key == "CONTEXT.LOCATION" and isinstance(new, str):
        return new
    raise bad(f"has type {type(new).__name__}")


def _check_types(cfg: CfgNode, defaults: CfgNode, prefix: str = "") -> None:
    """Every key of ``cfg`` has its default's type (catches values set in Python, not through merging)."""
    for k, old in defaults.items():
        new = cfg.get(k)
        if isinstance(old, CfgNode):
            if not isinstance(new, CfgNode):
                raise ConfigError(f"{prefix}{k} = {new!r}: expected a section of config keys")
            _check_types(new, old, prefix + k + ".")
        else:
            _coerce(new, old, prefix + k, "config")


def _merge_dict(cfg: CfgNode, d: dict, source: str, prefix: str = "") -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(d).__name__}")
    for k, v in d.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            close = difflib.get_close_matches(str(k).upper(), list(cfg.keys()), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown config key {full}{hint}; known keys here: "
                f"{', '.join(prefix + c for c in sorted(cfg.keys()))}"
            )
        if isinstance(cfg[k], CfgNode):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {full} = {v!r} is a section of config keys; set its keys, e.g. "
                                  f"{full}.{sorted(cfg[k].keys())[0]}")
            _merge_dict(cfg[k], v, source, prefix=full + ".")
        else:
            declared = _declared(full)  # the key's own type, not a value an earlier file gave
            cfg[k] = _coerce(v, cfg[k] if declared is None else declared, full, source)


def _base_paths(d: dict, path: str) -> List[str]:
    """The files a config names under fvcore's ``_BASE_`` key (one path or a list), relative to its folder."""
    bases = d.pop(BASE_KEY, None)
    if bases is None:
        return []
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and bases and all(isinstance(b, str) and b for b in bases)):
        raise ConfigError(f"{path}: {BASE_KEY} = {bases!r}; expected the path of a config file (or a list of "
                          "paths), relative to this file's folder")
    here = os.path.dirname(path)
    return [b if os.path.isabs(b) or b.startswith("~") or "://" in b else os.path.join(here, b) for b in bases]


def merge_from_file(cfg: CfgNode, path: str, _chain: Sequence[str] = ()) -> dict:
    """Merge a YAML override file into ``cfg`` (through iopath); returns what the file itself set.

    A file may inherit from others with fvcore's ``_BASE_`` key (``_BASE_: slow_r50_8x8.yaml``, a path
    relative to the file's folder, or a list of them): the bases are merged first, in order, then the
    file's own keys; each error names the file that set the key. (An OUTPUT_DIR set by a base is not
    inherited: ``load_cfg`` names the folder after the file given, so two configs never share a run.)"""
    from gcvideo.utils.io import path_manager

    if not path_manager.exists(path):
        where = f" (the {BASE_KEY} of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path}{where} does not exist")
    real = os.path.realpath(path) if "://" not in path else path
    if real in _chain:
        raise ConfigError(f"{path}: {BASE_KEY} makes a cycle: {' -> '.join([*_chain, real])}")
    with path_manager.open(path, "r") as f:
        try:
            d = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    for base in _base_paths(d, path):
        merge_from_file(cfg, base, (*_chain, real))
    _merge_dict(cfg, d, source=path)
    return d


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def merge_from_list(cfg: CfgNode, opts: Sequence[str]) -> None:
    """Merge ``KEY VALUE`` pairs (command line) into ``cfg``."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for key, text in zip(opts[0::2], opts[1::2]):
        d: dict = {}
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        default = _declared(key)  # the key's allowed forms decide the parse, not its current value
        if default is None:
            default = cfg
            for p in parts:
                default = default.get(p) if isinstance(default, CfgNode) else None
        if isinstance(default, str) and isinstance(text, str):
            node[parts[-1]] = text  # a string key takes the text as given ("null", "2024", "~/runs")
        else:
            node[parts[-1]] = _parse_value(text) if isinstance(text, str) else text
        _merge_dict(cfg, d, source="command line")


def load_cfg(config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None,
             check_files: bool = True, stored: Optional[Tuple[str, str]] = None) -> CfgNode:
    """Defaults <- YAML file <- command-line pairs, validated and frozen. ``stored``: (where, YAML text)
    of a resolved config (the one a checkpoint holds), merged in place of the file."""
    from gcvideo.utils.package_data import resolve_shipped

    cfg = get_cfg()
    # a shipped config or label map ("configs/...", "datasets/...") is found from any folder
    from_file = merge_from_file(cfg, resolve_shipped(config_file)) if config_file else {}
    if stored is not None:
        try:
            _merge_dict(cfg, yaml.safe_load(stored[1]) or {}, source=f"the config stored in {stored[0]}")
        except yaml.YAMLError as e:
            raise ConfigError(f"the config stored in {stored[0]} is not valid YAML: {e}") from e
    merge_from_list(cfg, opts or [])
    cfg.DATA.LABEL_MAP = resolve_shipped(cfg.DATA.LABEL_MAP)
    if config_file and "OUTPUT_DIR" not in from_file and "OUTPUT_DIR" not in list(opts or [])[0::2]:
        cfg.OUTPUT_DIR = "runs/" + os.path.splitext(os.path.basename(config_file))[0]
    validate_cfg(cfg, check_files=check_files)
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def stage_depths(cfg: CfgNode) -> List[int]:
    """Blocks per stage res2..res5."""
    if cfg.MODEL.STAGE_DEPTHS:
        return list(cfg.MODEL.STAGE_DEPTHS)
    return list(_DEPTHS[cfg.MODEL.DEPTH])


def context_indices(location, depths: Sequence[int]) -> List[List[int]]:
    """Expand CONTEXT.LOCATION ("all" or per-stage lists/"all") to index lists."""
    if isinstance(location, str):
        location = [location] * len(depths)
    out = []
    for entry, d in zip(location, depths):
        if isinstance(entry, str):
            out.append(list(range(d)) if entry == "all" else [])
        else:
            out.append(sorted(int(i) for i in entry))
    return out


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


def _one_of(cfg_value, key: str, allowed: Iterable) -> None:
    allowed = list(allowed)
    _check(cfg_value in allowed, key, cfg_value, "one of " + ", ".join(repr(a) for a in allowed))


def validate_cfg(cfg: CfgNode, check_files: bool = True) -> None:
    """Raise ConfigError for impossible values, naming key, value and what is allowed."""
    from gcvideo.utils.io import path_manager

    _check_types(cfg, _C)
    m, c, d, s, t, te = cfg.MODEL, cfg.CONTEXT, cfg.DATA, cfg.SOLVER, cfg.TRAIN, cfg.TEST
    _one_of(cfg.DEVICE, "DEVICE", ["auto", "cpu", "cuda"])
    _check(1 <= cfg.DIST.TIMEOUT < float("inf"), "DIST.TIMEOUT", cfg.DIST.TIMEOUT, "a number of seconds >= 1")
    # ---- model
    if m.STAGE_DEPTHS:
        _check(len(m.STAGE_DEPTHS) == 4 and all(isinstance(x, int) and x >= 1 for x in m.STAGE_DEPTHS),
               "MODEL.STAGE_DEPTHS", m.STAGE_DEPTHS, "4 positive integers (blocks in res2..res5) or []")
    else:
        _one_of(m.DEPTH, "MODEL.DEPTH", sorted(_DEPTHS))
    _check(m.NUM_CLASSES >= 1, "MODEL.NUM_CLASSES", m.NUM_CLASSES, "a positive integer")
    _check(m.WIDTH >= 1, "MODEL.WIDTH", m.WIDTH, "a positive integer")
    _check(len(m.STEM_KERNEL) == 3 and all(k % 2 == 1 for k in m.STEM_KERNEL), "MODEL.STEM_KERNEL",
           m.STEM_KERNEL, "3 odd integers (T, H, W)")
    _check(len(m.TEMPORAL_KERNELS) == 4 and all(k in (1, 3, 5) for k in m.TEMPORAL_KERNELS),
           "MODEL.TEMPORAL_KERNELS", m.TEMPORAL_KERNELS, "4 odd temporal kernel sizes in {1, 3, 5}")
    _check(0.0 <= m.DROPOUT < 1.0, "MODEL.DROPOUT", m.DROPOUT, "a probability in [0, 1)")
    _one_of(m.HEAD_POOL, "MODEL.HEAD_POOL", ["global", "train_crop_logits", "train_crop_probs"])
    _one_of(m.LOSS, "MODEL.LOSS", list(LOSSES))
    # ---- context blocks
    _one_of(c.TYPE, "CONTEXT.TYPE", ["none", *CONTEXT_TYPES])
    depths = stage_depths(cfg)
    loc = c.LOCATION
    if isinstance(loc, str):
        _check(loc == "all", "CONTEXT.LOCATION", loc, '"all" or a list of 4 per-stage entries')
    else:
        _check(len(loc) == 4, "CONTEXT.LOCATION", loc,
               "4 per-stage entries (res2..res5), each a list of block indices or \"all\"")
        for si, (entry, dep) in enumerate(zip(loc, depths)):
            key = f"CONTEXT.LOCATION[{si}] (res{si + 2}, {dep} blocks)"
            if isinstance(entry, str):
                _check(entry == "all", key, entry, '"all" or a list of block indices')
                continue
            _check(isinstance(entry, (list, tuple)), key, entry, 'a list of block indices or "all"')
            for i in entry:
                _check(_is_int(i) and 0 <= i < dep, key, i,
                       f"block indices 0..{dep - 1} (res{si + 2} has {dep} blocks)")
            _check(len(set(entry)) == len(entry), key, entry, "indices without repeats")
    any_blocks = any(context_indices(loc, depths))
    if c.TYPE == "none" and any_blocks:
        raise ConfigError(f"CONTEXT.LOCATION = {loc!r} places blocks but CONTEXT.TYPE = 'none'; "
                          f"set CONTEXT.TYPE to one of {', '.join(CONTEXT_TYPES)}")
    _one_of(c.POSITION, "CONTEXT.POSITION", ["auto", *CONTEXT_POSITIONS])
    _one_of(c.POOLING, "CONTEXT.POOLING", ["auto", *POOLINGS])
    _one_of(c.TRANSFORM, "CONTEXT.TRANSFORM", ["auto", *TRANSFORMS])
    _one_of(c.NORM, "CONTEXT.NORM", ["auto", *NORMS])
    _one_of(c.FUSION, "CONTEXT.FUSION", ["auto", *FUSIONS])
    _check(0.0 < c.RATIO <= 1.0, "CONTEXT.RATIO", c.RATIO, "a ratio in (0, 1], e.g. 0.25 or 0.0625")
    if c.TYPE in CONTEXT_PRESETS:  # the norm sits inside the bottleneck: a linear transform has none
        transform = CONTEXT_PRESETS[c.TYPE]["transform"] if c.TRANSFORM == "auto" else c.TRANSFORM
        norm = CONTEXT_PRESETS[c.TYPE]["norm"] if c.NORM == "auto" else c.NORM
        _check(transform != "linear" or norm == "none", "CONTEXT.NORM", c.NORM,
               f"'none' or 'auto' with a linear transform (CONTEXT.TYPE {c.TYPE}, CONTEXT.TRANSFORM {c.TRANSFORM})")
    if c.TYPE in CONTEXT_PRESETS and any_blocks:
        idx = context_indices(loc, depths)
        for si in range(4):
            if not idx[si]:
                continue
            ch = stage_out_channels(m.WIDTH)[si]
            if c.TYPE != "snl" or c.TRANSFORM == "bottleneck":
                inner = ch * c.RATIO
                _check(abs(inner - round(inner)) < 1e-6 and round(inner) >= 1, "CONTEXT.RATIO", c.RATIO,
                       f"a ratio r with C*r a whole number for every stage with blocks; res{si + 2} has "
                       f"C = {ch} channels, C*r = {inner:g}")
    _one_of(c.NL_INSTANTIATION, "CONTEXT.NL_INSTANTIATION", list(NL_INSTANTIATIONS))
    _check(0.0 < c.NL_INNER_RATIO <= 1.0, "CONTEXT.NL_INNER_RATIO", c.NL_INNER_RATIO, "a ratio in (0, 1]")
    if c.TYPE == "nl" and any_blocks:
        for si, ids in enumerate(context_indices(loc, depths)):
            ch = stage_out_channels(m.WIDTH)[si]
            inner = ch * c.NL_INNER_RATIO
            if ids:
                _check(abs(inner - round(inner)) < 1e-6, "CONTEXT.NL_INNER_RATIO", c.NL_INNER_RATIO,
                       f"a ratio with C*ratio whole; res{si + 2} has C = {ch}")
    _one_of(c.NL_POOL_POSITION, "CONTEXT.NL_POOL_POSITION", list(NL_POOL_POSITIONS))
    _check(len(c.NL_POOL) in (0, 3) and all(isinstance(k, int) and k >= 1 for k in c.NL_POOL),
           "CONTEXT.NL_POOL", c.NL_POOL, "[] or 3 positive integers (T, H, W), e.g. [1, 2, 2]")
    # ---- data
    _one_of(d.FORMAT, "DATA.FORMAT", ANNOTATION_FORMATS)
    _one_of(d.CLIP_LAYOUT, "DATA.CLIP_LAYOUT", CLIP_LAYOUTS)
    _one_of(d.DECODER, "DATA.DECODER", DECODERS)
    _check(d.DECODE_DEVICE == "cpu" or (str(d.DECODE_DEVICE).startswith("cuda") and d.DECODER == "torchcodec"),
           "DATA.DECODE_DEVICE", d.DECODE_DEVICE, "'cpu', or 'cuda' with DATA.DECODER torchcodec")
    _check(d.DECODE_DEVICE == "cpu" or (d.NUM_WORKERS == 0 and not d.PIN_MEMORY), "DATA.DECODE_DEVICE", d.DECODE_DEVICE,
           "'cpu' with DataLoader workers or pinned memory (GPU frames are made in the main process: "
           "set DATA.NUM_WORKERS 0 and DATA.PIN_MEMORY False)")
    _check(isinstance(d.DECODER_THREADS, int) and d.DECODER_THREADS >= 0, "DATA.DECODER_THREADS",
           d.DECODER_THREADS, "0 (auto) or a positive number of threads")
    _check(d.NUM_FRAMES >= 1, "DATA.NUM_FRAMES", d.NUM_FRAMES, "a positive integer")
    _check(d.SAMPLING_RATE >= 1, "DATA.SAMPLING_RATE", d.SAMPLING_RATE, "a positive integer")
    _check(d.TARGET_FPS > 0, "DATA.TARGET_FPS", d.TARGET_FPS, "a positive frame rate")
    js = d.TRAIN_JITTER_SCALES
    _check(len(js) == 2 and 0 < js[0] <= js[1], "DATA.TRAIN_JITTER_SCALES", js, "[min, max] with 0 < min <= max")
    _check(0 < d.TRAIN_CROP_SIZE <= js[0], "DATA.TRAIN_CROP_SIZE", d.TRAIN_CROP_SIZE,
           f"a crop size no larger than the smallest jitter scale {js[0]}")
    _check(d.TEST_CROP_SIZE > 0, "DATA.TEST_CROP_SIZE", d.TEST_CROP_SIZE, "a positive integer")
    _check(len(d.MEAN) == 3 and len(d.STD) == 3 and all(x > 0 for x in d.STD), "DATA.MEAN/DATA.STD",
           (d.MEAN, d.STD), "3 means and 3 positive stds")
    _check(0.0 <= d.REVERSE_PROB <= 1.0, "DATA.REVERSE_PROB", d.REVERSE_PROB, "a probability in [0, 1]")
    for key in ("FLIP_LABEL_PAIRS", "REVERSE_LABEL_PAIRS"):
        pairs = d[key]
        _check(all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and
                   0 <= x < m.NUM_CLASSES for x in p) for p in pairs), f"DATA.{key}", pairs,
               f"a list of [from, to] class-index pairs in 0..{m.NUM_CLASSES - 1}")
        sources = [p[0] for p in pairs]
        _check(len(set(sources)) == len(sources), f"DATA.{key}", pairs,
               "each class at most once as 'from' (pairs are directed: give [a, b] and [b, a] for a swap)")
    _check(isinstance(d.MAX_FRAME_PIXELS, int) and d.MAX_FRAME_PIXELS >= 1, "DATA.MAX_FRAME_PIXELS",
           d.MAX_FRAME_PIXELS, "a positive number of pixels")
    _check(isinstance(d.MAX_ASPECT_RATIO, (int, float)) and d.MAX_ASPECT_RATIO >= 1, "DATA.MAX_ASPECT_RATIO",
           d.MAX_ASPECT_RATIO, "a number >= 1 (long side / short side)")
    _check(0.0 <= d.MAX_BROKEN_FRACTION <= 1.0, "DATA.MAX_BROKEN_FRACTION", d.MAX_BROKEN_FRACTION,
           "a share in [0, 1]")
    _check(d.NUM_WORKERS >= 0, "DATA.NUM_WORKERS", d.NUM_WORKERS, "0 or more")
    _check(isinstance(d.PREFETCH_FACTOR, int) and d.PREFETCH_FACTOR >= 1, "DATA.PREFETCH_FACTOR",
           d.PREFETCH_FACTOR, "a positive number of batches per worker")
    _check(isinstance(d.NUM_SAMPLES, int) and d.NUM_SAMPLES >= 1, "DATA.NUM_SAMPLES", d.NUM_SAMPLES,
           "a positive number of clips per training video")
    _check(not d.PAIR_REVERSED or d.NUM_SAMPLES % 2 == 0, "DATA.PAIR_REVERSED", d.PAIR_REVERSED,
           f"False with DATA.NUM_SAMPLES {d.NUM_SAMPLES} (pairs need an even number of clips per video)")
    # ---- augmentation
    a = cfg.AUG
    _check(_is_int(a.RAND_AUGMENT_N) and a.RAND_AUGMENT_N >= 1, "AUG.RAND_AUGMENT_N", a.RAND_AUGMENT_N,
           "a positive number of ops per clip")
    _check(_is_int(a.RAND_AUGMENT_M) and 0 <= a.RAND_AUGMENT_M <= MAX_MAGNITUDE, "AUG.RAND_AUGMENT_M",
           a.RAND_AUGMENT_M, f"a magnitude in 0..{MAX_MAGNITUDE}")
    _check(0.0 <= a.RE_PROB <= 1.0, "AUG.RE_PROB", a.RE_PROB, "a probability in [0, 1]")
    # ---- solver / train / test
    _check(math.isfinite(s.BASE_LR) and 0 < s.BASE_LR <= MAX_LR, "SOLVER.BASE_LR", s.BASE_LR,
           f"a finite learning rate in (0, {MAX_LR:g}]")
    _check(s.REFERENCE_BATCH_SIZE >= 1, "SOLVER.REFERENCE_BATCH_SIZE", s.REFERENCE_BATCH_SIZE, "a positive integer")
    _check(t.BATCH_SIZE >= 1, "TRAIN.BATCH_SIZE", t.BATCH_SIZE, "a positive integer")
    _check(_is_int(t.ACCUM_STEPS) and t.ACCUM_STEPS >= 1, "TRAIN.ACCUM_STEPS", t.ACCUM_STEPS,
           "a positive integer (1 = no gradient accumulation)")
    world = _world_size()
    _check(t.ACCUM_STEPS == 1 or t.BATCH_SIZE % (world * t.ACCUM_STEPS) == 0, "TRAIN.ACCUM_STEPS", t.ACCUM_STEPS,
           f"a divisor of the {t.BATCH_SIZE // world if t.BATCH_SIZE % world == 0 else t.BATCH_SIZE / world:g} videos "
           f"per process (TRAIN.BATCH_SIZE {t.BATCH_SIZE} / {world} process(es): the global batch of one optimizer "
           "step, which each process cuts into ACCUM_STEPS equal micro-batches)")
    lr = s.BASE_LR * t.BATCH_SIZE / s.REFERENCE_BATCH_SIZE  # gcvideo.engine.optim.scaled_lr
    _check(lr <= MAX_LR, "SOLVER.BASE_LR", s.BASE_LR,
           f"a learning rate that, scaled to TRAIN.BATCH_SIZE {t.BATCH_SIZE} / SOLVER.REFERENCE_BATCH_SIZE "
           f"{s.REFERENCE_BATCH_SIZE}, is at most {MAX_LR:g} (it is {lr:g})")
    for key in ("WARMUP_START_FACTOR", "COSINE_END_FACTOR"):  # fractions of the scaled LR
        _check(math.isfinite(s[key]) and 0 <= s[key] <= 1, f"SOLVER.{key}", s[key], "a fraction in [0, 1]")
    _check(s.MAX_EPOCH >= 1, "SOLVER.MAX_EPOCH", s.MAX_EPOCH, "a positive integer")
    _check(0 <= s.WARMUP_EPOCHS < s.MAX_EPOCH, "SOLVER.WARMUP_EPOCHS", s.WARMUP_EPOCHS,
           f"0 <= it < SOLVER.MAX_EPOCH ({s.MAX_EPOCH}): a warm-up as long as training leaves no epoch at "
           f"the full LR; shorten it or train longer")
    _check(0 <= s.MOMENTUM < 1, "SOLVER.MOMENTUM", s.MOMENTUM, "a value in [0, 1)")
    _one_of(s.OPTIMIZING_METHOD, "SOLVER.OPTIMIZING_METHOD", list(OPTIMIZERS))
    _check(len(s.BETAS) == 2 and all(0 <= b < 1 for b in s.BETAS), "SOLVER.BETAS", s.BETAS,
           "two values in [0, 1)")
    _check(s.WEIGHT_DECAY >= 0, "SOLVER.WEIGHT_DECAY", s.WEIGHT_DECAY, "0 or more")
    _check(s.CLIP_GRAD_NORM >= 0, "SOLVER.CLIP_GRAD_NORM", s.CLIP_GRAD_NORM, "0 (off) or a positive norm")
    _check(len(t.EVAL_VIEWS) == 2 and all(isinstance(v, int) and v >= 1 for v in t.EVAL_VIEWS),
           "TRAIN.EVAL_VIEWS", t.EVAL_VIEWS, "[clips, crops], two positive integers")
    _check(t.KEEP_LAST >= 1, "TRAIN.KEEP_LAST", t.KEEP_LAST, "1 or more")
    _check(t.CPU_THREADS >= 0, "TRAIN.CPU_THREADS", t.CPU_THREADS, "0 (automatic) or a positive thread count")
    _one_of(t.MIXED_PRECISION, "TRAIN.MIXED_PRECISION", ["none", "bf16", "fp16", "auto"])
    _check(0.0 <= t.LABEL_SMOOTHING < 1.0, "TRAIN.LABEL_SMOOTHING", t.LABEL_SMOOTHING, "a value in [0, 1)")
    _check_mixup(cfg)
    _check(te.NUM_ENSEMBLE_VIEWS >= 1, "TEST.NUM_ENSEMBLE_VIEWS", te.NUM_ENSEMBLE_VIEWS, "a positive integer")
    _one_of(te.NUM_SPATIAL_CROPS, "TEST.NUM_SPATIAL_CROPS", [1, 3])
    _one_of(te.VIEW_PROTOCOL, "TEST.VIEW_PROTOCOL", list(VIEW_PROTOCOLS))
    _one_of(te.ENSEMBLE_METHOD, "TEST.ENSEMBLE_METHOD", ["prob_mean", "logit_mean", "prob_max"])
    _check(te.BATCH_SIZE >= 1, "TEST.BATCH_SIZE", te.BATCH_SIZE, "a positive integer")
    _check_memory(cfg)
    # ---- files that must exist
    if check_files:
        for key, value in (("TRAIN.INIT_FROM", t.INIT_FROM), ("TEST.CHECKPOINT", te.CHECKPOINT),
                           ("DATA.LABEL_MAP", d.LABEL_MAP)):
            if value and not path_manager.exists(value) and not (key == "TEST.CHECKPOINT" and value == "best"):
                raise ConfigError(f"{key} = {value!r}: file does not exist")


def _check_mixup(cfg: CfgNode) -> None:
    """MIXUP.* values; with MIXUP.ENABLE: the soft-target loss, no second smoothing, two rows a batch."""
    mx, d, t = cfg.MIXUP, cfg.DATA, cfg.TRAIN
    for key in ("ALPHA", "CUTMIX_ALPHA"):
        _check(math.isfinite(mx[key]) and mx[key] >= 0, f"MIXUP.{key}", mx[key], "0 (off) or a positive Beta parameter")
    for key in ("PROB", "SWITCH_PROB"):
        _check(0.0 <= mx[key] <= 1.0, f"MIXUP.{key}", mx[key], "a probability in [0, 1]")
    _check(0.0 <= mx.LABEL_SMOOTHING < 1.0, "MIXUP.LABEL_SMOOTHING", mx.LABEL_SMOOTHING, "a value in [0, 1)")
    if not mx.ENABLE:
        return
    _check(mx.ALPHA > 0 or mx.CUTMIX_ALPHA > 0, "MIXUP.ENABLE", mx.ENABLE,
           "False with MIXUP.ALPHA and MIXUP.CUTMIX_ALPHA both 0 (set one of them > 0)")
    soft = [name for name, loss in LOSSES.items() if loss.soft_targets]
    _check(cfg.MODEL.LOSS in soft, "MODEL.LOSS", cfg.MODEL.LOSS,
           " or ".join(map(repr, soft)) + " with MIXUP.ENABLE (mixed targets are distributions)")
    _check(t.LABEL_SMOOTHING == 0, "TRAIN.LABEL_SMOOTHING", t.LABEL_SMOOTHING,
           "0 with MIXUP.ENABLE (the mixed targets are smoothed by MIXUP.LABEL_SMOOTHING)")
    world = _world_size()
    rows = max(1, t.BATCH_SIZE // world // t.ACCUM_STEPS) * d.NUM_SAMPLES  # a (micro-)batch is mixed within itself
    _check(rows >= 2, "MIXUP.ENABLE", mx.ENABLE,
           f"False with {rows} clip per process and micro-batch (TRAIN.BATCH_SIZE {t.BATCH_SIZE} over {world} "
           f"process(es) and TRAIN.ACCUM_STEPS {t.ACCUM_STEPS}, x DATA.NUM_SAMPLES {d.NUM_SAMPLES}): a clip can "
           "only be mixed with another one")


def _check_memory(cfg: CfgNode) -> None:
    """ConfigError when one item or one batch (per process: torchrun's WORLD_SIZE) of the training,
    validation or test data would need more than DATA.MAX_ITEM_BYTES / DATA.MAX_BATCH_BYTES."""
    from gcvideo.data.item_bytes import batch_bytes, eval_item_bytes, over_bound, train_item_bytes

    d, t, te = cfg.DATA, cfg.TRAIN, cfg.TEST
    for key in ("MAX_ITEM_BYTES", "MAX_BATCH_BYTES"):
        _check(_is_int(d[key]) and d[key] >= 1, f"DATA.{key}", d[key], "a positive number of bytes")
    aspect = d.MAX_ASPECT_RATIO
    world = _world_size()
    sets = [("a training", "DATA.NUM_FRAMES, DATA.NUM_SAMPLES, DATA.TRAIN_JITTER_SCALES, DATA.TRAIN_CROP_SIZE",
             "TRAIN.BATCH_SIZE",
             train_item_bytes(d.NUM_FRAMES, d.NUM_SAMPLES, d.TRAIN_JITTER_SCALES[1], d.TRAIN_CROP_SIZE, aspect,
                              d.TRAIN_UINT8),
             batch_bytes(max(1, t.BATCH_SIZE // world), d.NUM_SAMPLES, d.NUM_FRAMES, d.TRAIN_CROP_SIZE,
                         d.TRAIN_UINT8))]
    views = [("a test", "TEST.NUM_ENSEMBLE_VIEWS, TEST.NUM_SPATIAL_CROPS", te.NUM_ENSEMBLE_VIEWS, te.NUM_SPATIAL_CROPS)]
    if t.EVAL_PERIOD > 0:
        views.append(("a validation", "TRAIN.EVAL_VIEWS", t.EVAL_VIEWS[0], t.EVAL_VIEWS[1]))
    for what, keys, clips, crops in views:
        sets.append((what, f"{keys}, DATA.NUM_FRAMES, DATA.TEST_CROP_SIZE", "TEST.BATCH_SIZE",
                     eval_item_bytes(d.NUM_FRAMES, clips, crops, d.TEST_CROP_SIZE, aspect, d.EVAL_UINT8),
                     batch_bytes(te.BATCH_SIZE, clips * crops, d.NUM_FRAMES, d.TEST_CROP_SIZE, d.EVAL_UINT8)))
    for what, keys, batch_key, item, batch in sets:
        for est, bound_key, unit, lower in ((item, "MAX_ITEM_BYTES", "item", keys),
                                            (batch, "MAX_BATCH_BYTES", "batch", f"{batch_key}, {keys}")):
            refusal = over_bound(f"{what} {unit}", est, f"DATA.{bound_key}", d[bound_key], lower)
            if refusal:
                raise ConfigError(refusal)


def _world_size() -> int:
    """The processes of this run as torchrun announces them (WORLD_SIZE; 1 without torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def stage_out_channels(width: int) -> List[int]:
    """Output channels of res2..res5 for stem width ``width`` (64 -> 256..2048)."""
    return [width * 4 * 2 ** i for i in range(4)]


def dump_cfg(cfg: CfgNode) -> str:
    """The resolved config as YAML text."""
    return cfg.dump()
