"""Run observability: JSON-lines metrics, TensorBoard events, training-curve PNG, tqdm bars.

Only the main process (rank 0) writes; other processes get a logger whose
methods do nothing. Files in the output folder (through iopath):
``metrics.jsonl`` (one JSON object per logging step, per epoch and per
evaluation), ``curves.png`` (loss, LR, validation top-1), ``tb/`` (TensorBoard).
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from typing import Any, Dict, List

from gcvideo.utils.io import atomic_write_bytes, atomic_write_text, disk_full_error, local_path, path_manager
from gcvideo.utils.progress import progress_bar, progress_write

__all__ = ["RunLogger", "format_duration"]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RunLogger:
    """Writes metrics of one training run; a no-op unless ``enabled`` (rank 0)."""

    def __init__(self, output_dir: str, enabled: bool, resume_iter: int = 0, progress: bool = True):
        self.enabled = enabled
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.curves_path = os.path.join(output_dir, "curves.png")
        self.progress = progress and enabled
        self.iters: List[Dict[str, Any]] = []  # history for the curves
        self.epochs: List[Dict[str, Any]] = []
        self._tb = None
        self._file = None
        self._lines: List[str] = []  # the file's lines where it cannot be appended to
        if not enabled:
            return
        path_manager.mkdirs(output_dir)
        lines = self._load_history(resume_iter)
        try:
            self._file = path_manager.open(self.path, "a")
        except (ValueError, NotImplementedError, OSError):  # object stores cannot append: the lines
            self._lines = lines  # are kept and the file rewritten whole (each epoch and at the end)
        try:  # TensorBoard only when installed
            from torch.utils.tensorboard import SummaryWriter

            tb = os.path.join(output_dir, "tb")  # a file:// folder as its local path, like every other writer
            self._tb = SummaryWriter(log_dir=local_path(tb) or tb, purge_step=resume_iter or None)
        except Exception:  # ImportError, or tensorboard missing inside torch's wrapper
            self._tb = None
        self.write({"type": "start", "global_iter": resume_iter, "time": time.time()})

    def _load_history(self, resume_iter: int) -> List[str]:
        """Curves continue a resumed run; records past the resume point are replaced when redone.

        Returns the file's lines as they are (for locations that cannot append)."""
        if not path_manager.exists(self.path):
            return []
        with path_manager.open(self.path, "r") as f:
            lines = [ln if ln.endswith("\n") else ln + "\n" for ln in f]
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if rec.get("global_iter", 0) > resume_iter:
                continue
            if rec.get("type") == "iter":
                self.iters.append(rec)
            elif rec.get("type") == "epoch":
                self.epochs.append(rec)
        return lines

    def _rewrite(self) -> None:
        if self.enabled and self._file is None:
            atomic_write_text(self.path, "".join(self._lines))

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._lines.append(json.dumps(record) + "\n")
            if record.get("type") == "epoch":
                self._rewrite()
            return
        line = json.dumps(record) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            full = disk_full_error(e, self.path, len(line))
            if full is None:
                raise
            raise full from None

    def log_iter(self, record: Dict[str, Any]) -> None:
        """One logging step: ``global_iter``, ``loss``, ``lr`` and timings."""
        if not self.enabled:
            return
        record = {"type": "iter", **record}
        self.iters.append(record)
        self.write(record)
        if self._tb is not None:
            step = record["global_iter"]
            for key in ("loss", "lr", "clips_per_s", "data_share"):
                if key in record:
                    self._tb.add_scalar(f"train/{key}", record[key], step)

    def log_epoch(self, record: Dict[str, Any]) -> None:
        """One epoch: ``epoch`` (1-based), mean ``loss``, and ``val_top1``/``val_top5`` if evaluated."""
        if not self.enabled:
            return
        record = {"type": "epoch", **record}
        self.epochs.append(record)
        self.write(record)
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "global_iter", "type"):
                    self._tb.add_scalar(f"epoch/{key}", value, record["epoch"])
            self._tb.flush()
        self.plot_curves()

    def plot_curves(self) -> None:
        """curves.png: training loss, learning rate and validation top-1 against epochs."""
        if not self.enabled or not self.iters:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        ep = [r["epoch_progress"] for r in self.iters]
        axes[0].plot(ep, [r["loss"] for r in self.iters], lw=0.8)
        axes[0].set(title="training loss", xlabel="epoch")
        axes[1].plot(ep, [r["lr"] for r in self.iters], lw=0.8)
        axes[1].set(title="learning rate", xlabel="epoch")
        val = [(r["epoch"], r["val_top1"]) for r in self.epochs if "val_top1" in r]
        if val:
            axes[2].plot([v[0] for v in val], [v[1] for v in val], marker="o")
        axes[2].set(title="validation top-1 (%)", xlabel="epoch")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.curves_path, buf.getvalue())

    def progress_bar(self, total: int, initial: int, desc: str):
        """A tqdm bar on the main process (None elsewhere or when progress is off)."""
        if not self.progress:
            return None
        return progress_bar(total=total, initial=initial, desc=desc)

    def info(self, msg: str) -> None:
        """One line on stdout; an open progress bar is cleared first and redrawn below it (``progress_write``)."""
        if self.enabled:
            progress_write(msg, file=sys.stdout)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the data it could not flush was already reported by ``write``
                pass
        else:
            self._rewrite()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
