"""The README's main job: make the toy dataset if needed, train and test a small model on it.

``run_toy`` only prepares the data and calls ``gcvideo.engine.train`` with a config
from ``configs/toy/``; the training code path is the one every config uses.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional, Sequence

from gcvideo.config import load_cfg
from gcvideo.engine.trainer import train

__all__ = ["run_toy"]


def run_toy(config_file: str = "configs/toy/slow_gc_toy.yaml", data_dir: Optional[str] = None,
            opts: Sequence[str] = (), log=print) -> Dict:
    """Train ``config_file`` and run its multi-view test, making the toy dataset first when the
    data folder (``data_dir``, default: the config's DATA.PATH_TO_DATA_DIR) needs it.

    The folder is used as it is when it holds a dataset that is not a toy set (say Kinetics with
    a Kinetics config: nothing here is toy-specific); a toy set is (re)generated only into an
    empty or missing folder or over a toy set made by another generator version, so existing
    data is never overwritten. Returns train()'s result plus timings.
    """
    from gcvideo.data.toy import TOY_FORMAT_VERSION, make_toy_dataset

    t0 = time.time()
    cfg = load_cfg(config_file, list(opts), check_files=False)
    data_dir = data_dir or cfg.DATA.PATH_TO_DATA_DIR
    if not data_dir:
        raise ValueError(f"{config_file}: DATA.PATH_TO_DATA_DIR is empty; give the data folder (--data DIR)")
    meta_path = os.path.join(data_dir, "meta.json")
    meta = None
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if not (isinstance(meta, dict) and "num_train" in meta and "classes" in meta):
            meta = None  # a meta.json of something else
    entries = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    overrides = ["DATA.PATH_TO_DATA_DIR", data_dir]
    if meta is None and entries:  # somebody's dataset: train on it as it is, generate nothing
        log(f"data: {data_dir} is not a toy dataset; training on it as it is")
    else:
        if meta is None or meta.get("version") != TOY_FORMAT_VERSION or not os.path.exists(
                os.path.join(data_dir, "train.csv")):  # empty folder, or made by an older generator
            log(f"toy dataset: generating {data_dir}")
            meta = make_toy_dataset(data_dir, progress=True)
        log(f"toy dataset: {data_dir} ({meta.get('num_train')} train / {meta.get('num_val')} val videos)")
        overrides += ["DATA.LABEL_MAP", os.path.join(data_dir, "classes.txt")]
    meta = meta or {}
    t_data = time.time() - t0
    cfg = load_cfg(config_file, list(opts) + overrides)
    result = train(cfg)
    result.update(data_s=t_data, total_s=time.time() - t0, num_train=meta.get("num_train"),
                  num_val=meta.get("num_val"), output_dir=cfg.OUTPUT_DIR)
    test = result.get("test")
    if test is not None:
        a = test["metrics"]["all"]
        log(f"\ntoy run finished in {result['total_s'] / 60:.1f} min (data {t_data / 60:.1f} min): "
            f"{test['summary'].splitlines()[0]}\n"
            f"top-1 {a['top1']:.2f}%  top-5 {a['top5']:.2f}%\n"
            f"report: {test['files']['text']}\ncurves: {os.path.join(cfg.OUTPUT_DIR, 'curves.png')}")
    return result
