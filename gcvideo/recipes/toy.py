"""The README's main job: make the toy dataset if needed, train and test a small model on it,
and draw where its global-context blocks look.

``run_toy`` prepares the data, calls ``gcvideo.engine.train`` with a config from
``configs/toy/`` (the training code path every config uses) and then, for a model with GC/SNL
or non-local blocks, writes the attention figures of one validation video per class with
``gcvideo.analysis.visualize_attention``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence

from gcvideo.analysis.attention import AttentionFigure, visualize_attention
from gcvideo.config import load_cfg
from gcvideo.data import build_dataset, build_views_dataset
from gcvideo.data.toy import TOY_FORMAT_VERSION, make_toy_dataset
from gcvideo.engine.distributed import is_main_process
from gcvideo.engine.tester import class_names
from gcvideo.engine.trainer import train
from gcvideo.layers import ContextBlock, NonLocalBlock
from gcvideo.models import build_model_from_checkpoint
from gcvideo.utils.device import select_device
from gcvideo.utils.errors import UsageError
from gcvideo.utils.progress import progress_bar

__all__ = ["run_toy", "prepare_toy_data", "attention_per_class"]


def prepare_toy_data(data_dir: str, log=print) -> Optional[Dict]:
    """Make the toy dataset in ``data_dir`` when it needs it; returns its meta.json content, or None
    when the folder holds a dataset that is not a toy set (it is then used as it is).

    A toy set is (re)generated only into an empty or missing folder or over a toy set made by
    another generator version, so existing data is never overwritten.
    """
    meta_path = os.path.join(data_dir, "meta.json")
    meta = None
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if not (isinstance(meta, dict) and "num_train" in meta and "classes" in meta):
            meta = None  # a meta.json of something else
    entries = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    if meta is None and entries:  # somebody's dataset: train on it as it is, generate nothing
        log(f"data: {data_dir} is not a toy dataset; training on it as it is")
        return None
    if meta is None or meta.get("version") != TOY_FORMAT_VERSION or not os.path.exists(
            os.path.join(data_dir, "train.csv")):  # empty folder, or made by an older generator
        log(f"toy dataset: generating {data_dir}")
        meta = make_toy_dataset(data_dir, progress=True)
    log(f"toy dataset: {data_dir} ({meta.get('num_train')} train / {meta.get('num_val')} val videos)")
    return meta


def attention_per_class(model, cfg, out_dir: str, progress: bool = False) -> List[Dict[str, str]]:
    """The attention figures (``visualize_attention``: PNG grid + GIF) of the first validation video of
    every class, in ``out_dir/<class name>/``; returns one entry per class with the files and the video.

    The centre clip and crop of each video, as the test decodes them; files of an earlier call
    (the same run and checkpoint) are replaced. ``progress``: a bar on stderr counting the videos
    done (decoded and drawn).
    """
    names = class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    first: Dict[int, str] = {}
    for rec in build_dataset(cfg, "val").records:
        first.setdefault(rec.label, rec.path)
    chosen = sorted(first.items())  # (label, path)
    views = build_views_dataset(cfg, [p for _, p in chosen], num_clips=1, num_crops=1)
    figure = AttentionFigure(cfg.DATA.MEAN, cfg.DATA.STD)  # every attention block, default queries
    bar = progress_bar(total=len(chosen), desc="attention", unit="video") if progress else None
    out = []
    for i, (label, path) in enumerate(chosen):
        item = views[i]
        if item["ok"]:  # a broken video is listed in the test report already
            files = visualize_attention(model, item["video"][:1], os.path.join(out_dir, names[label]), figure,
                                        overwrite=True, video=path)
            out.append(dict(files, label=names[label], video=path))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def run_toy(config_file: str = "configs/toy/slow_gc_toy.yaml", data_dir: Optional[str] = None,
            opts: Sequence[str] = (), log=print, attention: bool = True) -> Dict:
    """Train ``config_file`` and run its multi-view test, making the toy dataset first when the
    data folder (``data_dir``, default: the config's DATA.PATH_TO_DATA_DIR) needs it
    (``prepare_toy_data``); then, if ``attention`` and the model has attention blocks, the
    attention figures of one validation video per class (``attention_per_class``).

    Prints top-1/top-5 and the paths of the report, training curves, confusion matrix and
    attention figures. Returns train()'s result plus timings and ``attention`` (the figures).
    """
    t0 = time.time()
    cfg = load_cfg(config_file, list(opts), check_files=False)
    data_dir = data_dir or cfg.DATA.PATH_TO_DATA_DIR
    if not data_dir:
        raise UsageError(f"{config_file}: DATA.PATH_TO_DATA_DIR is empty; give the data folder (--data DIR)")
    # 1. data: the toy set, generated if missing, or the user's dataset as it is
    meta = prepare_toy_data(data_dir, log)
    overrides = ["DATA.PATH_TO_DATA_DIR", data_dir]
    if meta is not None:
        overrides += ["DATA.LABEL_MAP", os.path.join(data_dir, "classes.txt")]
    meta = meta or {}
    t_data = time.time() - t0
    # 2. train, validate, and the full multi-view test of the final weights
    cfg = load_cfg(config_file, list(opts) + overrides)
    result = train(cfg)
    # 3. where the context blocks look: one validation video per class, final weights
    figures: List[Dict[str, str]] = []
    test = result.get("test")
    if attention and test is not None and result.get("checkpoint"):
        model = build_model_from_checkpoint(cfg, result["checkpoint"]).to(select_device(cfg.DEVICE))
        if any(isinstance(m, NonLocalBlock) or (isinstance(m, ContextBlock) and m.pooling == "att")
               for _, m in model.named_context_blocks()):
            tag = os.path.splitext(os.path.basename(result["checkpoint"]))[0]
            figures = attention_per_class(model, cfg, os.path.join(cfg.OUTPUT_DIR, f"attention_{tag}"),
                                          progress=is_main_process())  # the bars are on the main process
    result.update(data_s=t_data, total_s=time.time() - t0, num_train=meta.get("num_train"),
                  num_val=meta.get("num_val"), output_dir=cfg.OUTPUT_DIR, attention=figures)
    # 4. what the user looks at
    if test is not None:
        a = test["metrics"]["all"]
        lines = [f"\ntoy run finished in {result['total_s'] / 60:.1f} min (data {t_data / 60:.1f} min): "
                 f"{test['summary'].splitlines()[0]}",
                 f"top-1 {a['top1']:.2f}%  top-5 {a['top5']:.2f}%",
                 f"report:            {test['files']['text']}",
                 f"training curves:   {os.path.join(cfg.OUTPUT_DIR, 'curves.png')}",
                 f"confusion matrix:  {test['files']['confusion']}"]
        if figures:
            lines.append(f"attention (one validation video per class, PNG grid + GIF): "
                         f"{os.path.dirname(os.path.dirname(figures[0]['png']))}/")
            lines += [f"  {f['label']:14s} {f['png']}  {f['gif']}" for f in figures]
        log("\n".join(lines))
    return result
