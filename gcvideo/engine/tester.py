"""Multi-view evaluation: ``evaluate`` (one pass over a loader) and ``test`` (the 30-view test).

Each process evaluates its own shard of the videos (``ShardSampler``: no
padding, no duplicates); per-video scores are gathered by dataset index, so
every video counts exactly once whatever the number of processes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader, Dataset

from gcvideo.config import ConfigError, get_cfg, load_cfg
from gcvideo.data.annotations import AnnotationError, read_label_map
from gcvideo.data.dataset import annotation_path, build_dataset
from gcvideo.engine import distributed as du
from gcvideo.engine.run_checkpoints import best_checkpoint_path, list_checkpoints
from gcvideo.engine.loader import ForkingLoader, LoaderSettings
from gcvideo.engine.device_prep import DevicePrep, build_device_prep
from gcvideo.engine.memory_format import model_channels_last
from gcvideo.engine.metrics import EvalResult, combine_views, compute_metrics, format_summary, write_report
from gcvideo.engine.precision import autocast, autocast_dtype, print_slow_bf16_warning
from gcvideo.models import build_model_from_checkpoint
from gcvideo.utils.device import select_device
from gcvideo.utils.folder_lock import FolderLock
from gcvideo.utils.cpu_tuning import tune_cpu
from gcvideo.utils.io import CheckpointError, CheckpointMismatchError, load_checkpoint_file, path_join, path_manager
from gcvideo.utils.progress import progress_bar
from gcvideo.utils.reproducibility import set_determinism

__all__ = ["EvalResult", "evaluate", "test", "run_test", "LoaderSettings", "EvalSettings", "TestSettings",
           "build_loader_settings", "build_eval_settings", "build_test_settings", "build_eval_loader", "class_names",
           "checkpoints_to_test", "build_test_set", "report_folder", "earlier_report", "load_checkpoint_cfg"]


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """This process's shard of ``dataset``, in index order.

    The loader has its own generator: iterating a DataLoader draws a seed from the global RNG
    otherwise, and a validation during training would shift the training's RNG stream (dropout,
    augmentation), so a run with validation would not train the same weights as one without.
    Its workers fork with a frozen garbage collector (``ForkingLoader``)."""
    sampler = du.ShardSampler(len(dataset), du.get_rank(), du.get_world_size())
    return ForkingLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, prep: DevicePrep, *, num_classes: int,
             ensemble_method: str = "prob_mean", amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False) -> EvalResult:
    """Scores of every video of ``loader.dataset`` combined over its views, gathered from all processes.

    ``prep`` moves each batch of views to its device (uint8 views, DATA.EVAL_UINT8, normalised there).
    """
    model.eval()
    mine = []
    bar = None
    if progress and du.is_main_process():  # this process's videos, counted as each batch completes
        bar = progress_bar(total=len(loader.sampler), desc="test", unit="video")
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
            x = prep(kept.flatten(0, 1))
            with autocast(prep.device, amp_dtype):
                logits = model(x)
            logits = logits.float().view(int(ok.sum()), v, num_classes).cpu()
            # 3. combine the views into one score vector per video: (n_ok, K)
            scores[ok] = combine_views(logits, ensemble_method)
        # 4. keep per-video records, keyed by dataset index
        for i in range(n):
            mine.append((int(batch["index"][i]), scores[i], int(batch["label"][i]), bool(ok[i]),
                         batch["path"][i], batch["error"][i] if "error" in batch else ""))
        if bar is not None:
            bar.set_postfix_str(f"{v} views each", refresh=False)
            bar.update(n)
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


def class_names(label_map: str, num_classes: int) -> List[str]:
    """Names from the label map (``read_label_map``: line i = class i), else "0", "1", ...; a label map
    with another class count than the classifier is a ``ConfigError``."""
    if not label_map:
        return [str(i) for i in range(num_classes)]
    names = read_label_map(label_map)
    if len(names) != num_classes:
        raise ConfigError(f"DATA.LABEL_MAP = {label_map!r} lists {len(names)} classes but "
                          f"MODEL.NUM_CLASSES = {num_classes}: set MODEL.NUM_CLASSES {len(names)} (the classifier "
                          "has one output per class) or give the label map of the model's classes")
    return names


def build_test_set(cfg: CfgNode, builder: Callable[[CfgNode, str], Dataset], why: str = "", hint: str = "") -> Dataset:
    """The test split's dataset (``builder(cfg, "test")``). Where DATA.TEST_FILE is left at its default
    and that file is absent but DATA.VAL_FILE exists (PySlowFast's train.csv + val.csv, as
    ``prepare_kinetics`` writes them), the validation list is tested instead, said in one line;
    another missing test list is an ``AnnotationError`` naming the keys to set (``why``: the message's
    start, e.g. "TRAIN.TEST_AT_END is on but "; ``hint``: what else the caller offers)."""
    try:
        return builder(cfg, "test")
    except AnnotationError as e:
        path = annotation_path(cfg, "test")
        if path_manager.exists(path):
            raise
        d = cfg.DATA
        val = annotation_path(cfg, "val")
        if d.TEST_FILE != get_cfg().DATA.TEST_FILE or not path_manager.exists(val):
            raise AnnotationError(
                f"{why}the test annotation file {path} (DATA.TEST_FILE = {d.TEST_FILE!r}) does not exist: provide "
                f"it or point DATA.TEST_FILE at another list (e.g. DATA.TEST_FILE {d.VAL_FILE} to test on the "
                f"validation list){hint}") from e
    if du.is_main_process():
        print(f"no {path}: testing on the validation list {val} (DATA.VAL_FILE; set DATA.TEST_FILE to test "
              "another list)", flush=True)
    val_cfg = cfg.clone()
    val_cfg.defrost()
    val_cfg.DATA.TEST_FILE, val_cfg.DATA.TEST_PATH_PREFIX = d.VAL_FILE, d.VAL_PATH_PREFIX
    val_cfg.freeze()
    return builder(val_cfg, "test")


def checkpoints_to_test(checkpoint: str, output_dir: str) -> List[str]:
    """The checkpoints to try, best first: ``checkpoint`` alone ("best": OUTPUT_DIR's TRAIN.KEEP_BEST
    checkpoint), else OUTPUT_DIR's, newest first."""
    if checkpoint == "best":
        best = best_checkpoint_path(output_dir)
        if not path_manager.exists(best):
            raise FileNotFoundError(f"no best checkpoint in OUTPUT_DIR = {output_dir!r}: {best} does not exist "
                                    "(training keeps it with TRAIN.KEEP_BEST True when it validates, "
                                    "TRAIN.EVAL_PERIOD > 0)")
        return [best]
    if checkpoint:
        return [checkpoint]
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint to test: TEST.CHECKPOINT is empty and OUTPUT_DIR = "
                                f"{output_dir!r} has no checkpoints/checkpoint_epoch*.pth")
    return found[::-1]


def load_checkpoint_cfg(opts: Sequence[str]) -> CfgNode:
    """The config stored in the checkpoint to test (TEST.CHECKPOINT of ``opts``, else the newest in their
    OUTPUT_DIR) with ``opts`` over it: what test_net.py and predict.py use without --config, so that the
    views are those the model was trained for."""
    given = load_cfg(None, opts, check_files=False)
    path = checkpoints_to_test(given.TEST.CHECKPOINT, given.OUTPUT_DIR)[0]
    ck = load_checkpoint_file(path)
    text = ck.get("config") if isinstance(ck, dict) else None
    if not isinstance(text, str):
        raise ConfigError(f"checkpoint {path} holds no gcvideo config (it was not written by gcvideo training): "
                          "give the config its model was trained with, --config FILE")
    return load_cfg(None, ["TRAIN.INIT_FROM", "", *opts], stored=(path, text))  # (a test needs no initial weights)


def config_for_checkpoint(config_file: str, opts: Sequence[str], checkpoint: str) -> CfgNode:
    """The config a tool runs ``checkpoint`` with: ``config_file`` with ``opts`` over it, or without one
    (``""``) the config stored in the checkpoint with ``opts`` over it (``load_checkpoint_cfg``; a checkpoint
    that holds none asks for ``--config``). Used by predict, export, visualize_attention, analyze_nonlocal."""
    if config_file:
        return load_cfg(config_file, opts)
    return load_checkpoint_cfg(list(opts) + ["TEST.CHECKPOINT", checkpoint])


def build_loader_settings(cfg: CfgNode) -> LoaderSettings:
    d = cfg.DATA
    return LoaderSettings(num_workers=d.NUM_WORKERS, pin_memory=d.PIN_MEMORY, prefetch_factor=d.PREFETCH_FACTOR)


@dataclass(frozen=True)
class EvalSettings:
    """How views are evaluated, by the validation during training and by the multi-view test."""
    prep: DevicePrep  # the batches onto the device (TRAIN.CHANNELS_LAST, DATA.MEAN/STD); the training step's too
    loader: LoaderSettings
    num_classes: int  # MODEL.NUM_CLASSES
    ensemble_method: str  # TEST.ENSEMBLE_METHOD
    batch_size: int  # TEST.BATCH_SIZE (videos a batch)
    mixed_precision: str  # TRAIN.MIXED_PRECISION (``autocast_dtype`` resolves it for the device)


def build_eval_settings(cfg: CfgNode, device: torch.device) -> EvalSettings:
    return EvalSettings(prep=build_device_prep(cfg, device), loader=build_loader_settings(cfg),
                        num_classes=cfg.MODEL.NUM_CLASSES, ensemble_method=cfg.TEST.ENSEMBLE_METHOD,
                        batch_size=cfg.TEST.BATCH_SIZE, mixed_precision=cfg.TRAIN.MIXED_PRECISION)


@dataclass(frozen=True)
class TestSettings:
    """What ``run_test`` needs beside the model and the dataset (``build_test_settings``)."""
    eval: EvalSettings
    output_dir: str  # OUTPUT_DIR: the report goes to a folder under it (``report_folder``)
    views: Tuple[int, int]  # (TEST.NUM_ENSEMBLE_VIEWS, TEST.NUM_SPATIAL_CROPS)
    class_names: List[str]  # DATA.LABEL_MAP's names, else "0", "1", ...
    setup: Dict[str, object] = field(default_factory=dict)  # view_protocol, head_pool, test_crop_size: named in reports


def build_test_settings(cfg: CfgNode, eval_settings: EvalSettings) -> TestSettings:
    """The test's settings from TEST.*, DATA.*, MODEL.* and OUTPUT_DIR, around ``eval_settings``
    (``build_eval_settings``); a label map of another class count is a ``ConfigError`` here."""
    te, d = cfg.TEST, cfg.DATA
    return TestSettings(eval=eval_settings, output_dir=cfg.OUTPUT_DIR,
                        views=(te.NUM_ENSEMBLE_VIEWS, te.NUM_SPATIAL_CROPS),
                        class_names=class_names(d.LABEL_MAP, cfg.MODEL.NUM_CLASSES),
                        setup={"view_protocol": te.VIEW_PROTOCOL, "head_pool": cfg.MODEL.HEAD_POOL,
                               "test_crop_size": d.TEST_CROP_SIZE})


def report_folder(output_dir: str, tag: str, views: Tuple[int, int], protocol: str = "gcvideo") -> str:
    """``output_dir/test_TAG_CxS[_PROTOCOL]``: where the first test of checkpoint TAG with C x S views
    (and a view protocol other than gcvideo) reports."""
    return path_join(output_dir, f"test_{tag}_{views[0]}x{views[1]}" + ("" if protocol == "gcvideo" else f"_{protocol}"))


def earlier_report(output_dir: str, tag: str, views: Tuple[int, int], protocol: str = "gcvideo") -> Optional[str]:
    """report.txt of the first test of checkpoint TAG with these views, None where there is none yet."""
    path = path_join(report_folder(output_dir, tag, views, protocol), "report.txt")
    return path if path_manager.exists(path) else None


def _free_report_folder(first: str) -> str:
    """``first``, or where it holds files already (an earlier report), the first of ``first_2``,
    ``first_3``, ... that holds none: a report is never replaced."""
    folder, n = first, 1
    while path_manager.exists(folder) and any(not e.startswith(".") for e in path_manager.ls(folder)):
        n += 1
        folder = f"{first}_{n}"
    if folder != first:
        print(f"{first} holds an earlier report (kept): this test reports to {folder}", flush=True)
    return folder


def run_test(model: nn.Module, dataset: Dataset, settings: TestSettings, tag: str) -> Optional[Dict]:
    """The multi-view test of ``model`` on ``dataset``; rank 0 writes the report under
    ``OUTPUT_DIR/test_TAG_CxS`` (``report_folder``: ``_PROTOCOL`` added for a view protocol other than
    gcvideo; ``_2``, ``_3``, ... where earlier tests reported there) and returns a summary. ``settings.setup``
    (view_protocol, head_pool, test_crop_size) is named in the summary and the report, so that two
    reports say how their numbers were made.

    Rank 0 holds that folder's lock from before the first video is decoded until the report is
    written, so a second test of the same checkpoint and views into the same folder is refused
    (``FolderInUse``, on every process) instead of mixing its files with this one's.
    """
    ev, views, setup = settings.eval, settings.views, dict(settings.setup)
    device = ev.prep.device
    protocol = setup.get("view_protocol", "gcvideo")
    text = f"{views[0]}x{views[1]} views" + (f" ({', '.join(f'{k} {v}' for k, v in setup.items())})" if setup else "")
    out_dir = du.broadcast_object(_free_report_folder(report_folder(settings.output_dir, tag, views, protocol))
                                  if du.is_main_process() else None)
    with _hold_report_folder(out_dir):
        loader = build_eval_loader(dataset, ev.batch_size, ev.loader.num_workers,
                                   ev.loader.for_device(device).pin_memory)
        res = evaluate(model, loader, ev.prep, num_classes=ev.num_classes, ensemble_method=ev.ensemble_method,
                       amp_dtype=autocast_dtype(ev.mixed_precision, device), progress=True)
        if not du.is_main_process():
            return None
        files = write_report(out_dir, res, settings.class_names, text,
                             extra={"ensemble_method": ev.ensemble_method, "checkpoint": tag,
                                    "views_clips_crops": list(views), **setup})
    summary = format_summary(res.metrics, text)
    print(summary + f"\nreport: {files['text']} (predictions: {files['predictions']})", flush=True)
    return {"metrics": res.metrics, "report_dir": out_dir, "files": files, "summary": summary}


@contextlib.contextmanager
def _hold_report_folder(out_dir: str) -> Iterator[None]:
    """Rank 0 locks the report folder ``out_dir`` (``FolderLock``); its refusal is raised on every process."""
    lock = FolderLock(out_dir, "the test report folder")

    def take() -> None:
        lock.acquire()
        if lock.note:
            print(lock.note, flush=True)

    du.run_on_main_process(take)
    try:
        yield
    finally:
        lock.release()


def test(cfg: CfgNode, *, dataset_builder: Optional[Callable[[CfgNode, str], Dataset]] = None,
         allow: Sequence[str] = ()) -> Optional[Dict]:
    """Evaluate TEST.CHECKPOINT (or the newest readable one in OUTPUT_DIR) with TEST.* views; returns
    the report (rank 0). A gcvideo checkpoint's stored config must agree with ``cfg`` on the settings
    that give its views their meaning (``build_model_from_checkpoint``), but for the keys in ``allow``
    (set explicitly on the command line)."""
    device = select_device(cfg.DEVICE)
    with du.process_group(device.type, cfg.DIST.TIMEOUT):
        set_determinism(cfg.TRAIN.DETERMINISTIC, device)
        tune_cpu(cfg.TRAIN.CPU_THREADS, cfg.TRAIN.CPU_KEEP_FREED_MEMORY, cfg.DATA.NUM_WORKERS, device)
        print_slow_bf16_warning(cfg.TRAIN.MIXED_PRECISION, device)
        model, ckpt = _load_test_model(cfg, checkpoints_to_test(cfg.TEST.CHECKPOINT, cfg.OUTPUT_DIR), allow)
        model.to(device)
        if cfg.TRAIN.CHANNELS_LAST:
            model_channels_last(model)
        dataset = build_test_set(cfg, dataset_builder or build_dataset)
        tag = os.path.splitext(os.path.basename(ckpt))[0]
        return run_test(model, dataset, build_test_settings(cfg, build_eval_settings(cfg, device)), tag)


def _load_test_model(cfg: CfgNode, candidates: List[str], allow: Sequence[str] = ()) -> Tuple[nn.Module, str]:
    """The config's model with the first candidate that reads (any format; every weight must fit).
    An unreadable newest checkpoint is skipped, as training does; one that reads but does not fit
    the config is an error."""
    for i, ckpt in enumerate(candidates):
        try:
            return build_model_from_checkpoint(cfg, ckpt, allow), ckpt
        except CheckpointError as e:
            if isinstance(e, CheckpointMismatchError) or i + 1 == len(candidates):
                raise
            print(f"warning: skipping unreadable checkpoint {ckpt}: {e}", flush=True)
    raise FileNotFoundError("no checkpoint to test")
