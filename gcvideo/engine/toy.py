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
    """Generate the toy dataset into ``data_dir`` (default: the config's DATA.PATH_TO_DATA_DIR) unless it is
    there and current, train, run the multi-view test; returns train()'s result plus timings."""
    from gcvideo.data.toy import TOY_FORMAT_VERSION, make_toy_dataset

    t0 = time.time()
    cfg = load_cfg(config_file, list(opts), check_files=False)
    data_dir = data_dir or cfg.DATA.PATH_TO_DATA_DIR
    meta_path = os.path.join(data_dir, "meta.json")
    meta = None
    if os.path.exists(meta_path) and os.path.exists(os.path.join(data_dir, "train.csv")):
        with open(meta_path) as f:
            meta = json.load(f)
    if meta is None or meta.get("version") != TOY_FORMAT_VERSION:  # missing, or made by an older generator
        log(f"toy dataset: generating {data_dir}")
        meta = make_toy_dataset(data_dir, progress=True)
    log(f"toy dataset: {data_dir} ({meta.get('num_train')} train / {meta.get('num_val')} val videos)")
    t_data = time.time() - t0
    overrides = ["DATA.PATH_TO_DATA_DIR", data_dir, "DATA.LABEL_MAP", os.path.join(data_dir, "classes.txt")]
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
