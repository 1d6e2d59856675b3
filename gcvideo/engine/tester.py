"""Multi-view evaluation: ``evaluate`` (one pass over a loader) and ``test`` (the 30-view test).

Each process evaluates its own shard of the videos (``ShardSampler``: no
padding, no duplicates); per-video scores are gathered by dataset index, so
every video counts exactly once whatever the number of processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader, Dataset

from gcvideo.engine import distributed as du
from gcvideo.engine.checkpoint import list_checkpoints
from gcvideo.engine.common import (autocast, autocast_dtype, class_names, model_channels_last, select_device,
                                   set_determinism, to_device, tune_cpu_memory)
from gcvideo.engine.metrics import combine_views, compute_metrics, format_summary, write_report
from gcvideo.utils.progress import progress_bar

__all__ = ["EvalResult", "evaluate", "test", "build_eval_loader", "resolve_test_checkpoint"]


@dataclass
class EvalResult:
    """Per-video results (sorted by dataset index) and the metrics over them."""
    indices: List[int]
    scores: torch.Tensor  # (N, K) combined over views; zeros for failed videos
    labels: torch.Tensor  # (N,)
    ok: torch.Tensor  # (N,) bool
    paths: List[str]
    errors: List[str]
    metrics: Dict = field(default_factory=dict)


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """This process's shard of ``dataset``, in index order.

    The loader has its own generator: iterating a DataLoader draws a seed from the global RNG
    otherwise, and a validation during training would shift the training's RNG stream (dropout,
    augmentation), so a run with validation would not train the same weights as one without."""
    sampler = du.ShardSampler(len(dataset), du.get_rank(), du.get_world_size())
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, device: torch.device,
             ensemble_method: str = "prob_mean", amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, progress: bool = False, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None) -> EvalResult:
    """Scores of every video of ``loader.dataset`` combined over its views, gathered from all processes.

    ``mean``/``std`` (DATA.MEAN/STD) normalise uint8 views on the device (DATA.EVAL_UINT8).
    """
    model.eval()
    mine = []
    bar = None
    if progress and du.is_main_process():
        bar = progress_bar(total=len(loader), desc="eval")
    for batch in loader:
        # 1. views of every video: (N, V, 3, T, H, W); one-view items (N, 3, T, H, W) get V = 1
        video = batch["video"]
        if video.dim() == 5:
            video = video.unsqueeze(1)
        n, v = video.shape[:2]
        ok = torch.as_tensor(batch["ok"], dtype=torch.bool).view(n)
        scores = torch.zeros(n, num_classes)
        # 2. forward the decodable videos' views as one batch: (n_ok * V, 3, T, H, W) -> (n_ok, V, K)
        if ok.any():
            kept = video if ok.all() else video[ok]  # (indexing would copy a pinned batch to pageable memory)
            x = to_device(kept.flatten(0, 1), device, channels_last, mean, std)
            with autocast(device, amp_dtype):
                logits = model(x)
            logits = logits.float().view(int(ok.sum()), v, num_classes).cpu()
            # 3. combine the views into one score vector per video: (n_ok, K)
            scores[ok] = combine_views(logits, ensemble_method)
        # 4. keep per-video records, keyed by dataset index
        for i in range(n):
            mine.append((int(batch["index"][i]), scores[i], int(batch["label"][i]), bool(ok[i]),
                         batch["path"][i], batch["error"][i] if "error" in batch else ""))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    # 5. gather all processes' records; each index must appear exactly once
    records = [r for part in du.all_gather_object(mine) for r in part]
    records.sort(key=lambda r: r[0])
    idx = [r[0] for r in records]
    if len(set(idx)) != len(idx) or len(idx) != len(loader.dataset):
        raise RuntimeError(f"evaluation gathered {len(idx)} results for {len(set(idx))} distinct videos; "
                           f"the dataset has {len(loader.dataset)}")
    res = EvalResult(indices=idx,
                     scores=torch.stack([r[1] for r in records]) if records else torch.zeros(0, num_classes),
                     labels=torch.tensor([r[2] for r in records], dtype=torch.int64),
                     ok=torch.tensor([r[3] for r in records], dtype=torch.bool),
                     paths=[r[4] for r in records], errors=[r[5] for r in records])
    # 6. top-1 / top-5 / mean class accuracy, failed videos counted wrong and left out
    res.metrics = compute_metrics(res.scores, res.labels, res.ok, num_classes)
    return res


def resolve_test_checkpoint(cfg: CfgNode) -> str:
    """TEST.CHECKPOINT, else the newest checkpoint in OUTPUT_DIR."""
    if cfg.TEST.CHECKPOINT:
        return cfg.TEST.CHECKPOINT
    found = list_checkpoints(cfg.OUTPUT_DIR)
    if not found:
        raise FileNotFoundError(f"no checkpoint to test: TEST.CHECKPOINT is empty and OUTPUT_DIR = "
                                f"{cfg.OUTPUT_DIR!r} has no checkpoints/checkpoint_epoch*.pth")
    return found[-1]


def _default_builder(cfg: CfgNode, split: str) -> Dataset:
    from gcvideo.data import build_dataset

    return build_dataset(cfg, split)


def run_test(cfg: CfgNode, model: nn.Module, device: torch.device, *, tag: str,
             dataset_builder: Callable[[CfgNode, str], Dataset]) -> Optional[Dict]:
    """The TEST.* multi-view test of ``model``; rank 0 writes the report and returns a summary."""
    te = cfg.TEST
    views = f"{te.NUM_ENSEMBLE_VIEWS}x{te.NUM_SPATIAL_CROPS} views"
    dataset = dataset_builder(cfg, "test")
    loader = build_eval_loader(dataset, te.BATCH_SIZE, cfg.DATA.NUM_WORKERS,
                               cfg.DATA.PIN_MEMORY and device.type == "cuda")
    res = evaluate(model, loader, num_classes=cfg.MODEL.NUM_CLASSES, device=device,
                   ensemble_method=te.ENSEMBLE_METHOD, amp_dtype=autocast_dtype(cfg, device),
                   channels_last=cfg.TRAIN.CHANNELS_LAST, progress=True, mean=cfg.DATA.MEAN, std=cfg.DATA.STD)
    if not du.is_main_process():
        return None
    out_dir = os.path.join(cfg.OUTPUT_DIR, f"test_{tag}_{te.NUM_ENSEMBLE_VIEWS}x{te.NUM_SPATIAL_CROPS}")
    files = write_report(out_dir, scores=res.scores, labels=res.labels, ok=res.ok, paths=res.paths,
                         errors=res.errors, indices=res.indices, class_names=class_names(cfg),
                         metrics=res.metrics, views=views,
                         extra={"ensemble_method": te.ENSEMBLE_METHOD, "checkpoint": tag})
    summary = format_summary(res.metrics, views)
    print(summary + f"\nreport: {files['text']} (predictions: {files['predictions']})", flush=True)
    return {"metrics": res.metrics, "report_dir": out_dir, "files": files, "summary": summary}


def test(cfg: CfgNode, *, dataset_builder: Optional[Callable[[CfgNode, str], Dataset]] = None) -> Optional[Dict]:
    """Evaluate TEST.CHECKPOINT (or the newest in OUTPUT_DIR) with TEST.* views; returns the report (rank 0)."""
    from gcvideo.models import build_model_from_checkpoint

    device = select_device(cfg)
    with du.process_group(device.type):
        set_determinism(cfg.TRAIN.DETERMINISTIC, device)
        tune_cpu_memory(cfg, device)
        ckpt = resolve_test_checkpoint(cfg)
        model = build_model_from_checkpoint(cfg, ckpt)  # any format; every weight must fit
        model.to(device)
        if cfg.TRAIN.CHANNELS_LAST:
            model_channels_last(model)
        tag = os.path.splitext(os.path.basename(ckpt))[0]
        return run_test(cfg, model, device, tag=tag, dataset_builder=dataset_builder or _default_builder)
