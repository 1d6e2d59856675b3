"""Where context blocks attend in a video: GC attention maps and non-local query maps.

References: Y. Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks
and Beyond" (ICCVW 2019) and "Global Context Networks" (TPAMI 2020), Figures 1-2: the
attention maps of different query positions of a non-local block are nearly the same,
which motivates the query-independent GC block, whose single attention map
alpha_j = softmax_j(W_k x_j) over all T*H*W positions we show here.

- ``context_input_hooks`` / ``capture_context_inputs``: the input of every context block,
  captured with forward pre-hooks on the modules of ``model.named_context_blocks()``.
- ``gc_attention_maps``: per GC/SNL block (attention pooling), ``ContextBlock.attention(x)``,
  (N, T, H, W), summing to 1 over T*H*W.
- ``nl_attention_maps``: per non-local block, the rows of ``NonLocalBlock.affinity(x)`` of
  chosen query positions, reshaped to the key grid (N, Q, T_k, H_k, W_k).
- ``render_gc`` / ``render_nl``: heatmaps (bilinearly upsampled to the frame, jet colour
  map, alpha-blended) over the input frames: a PNG grid and an animated GIF.
- ``visualize_attention``: run a model on one clip and write the figures (the library behind
  tools/visualize_attention.py, which loads the checkpoint and decodes the video's centre clip).

Display normalisation: a GC map is divided by its maximum over the whole clip (so the
frames of one block are comparable and the change over time is visible); a non-local map
by the maximum of that query's map. Labels give each map's peak relative to a uniform map
(max / mean; 1.0 = uniform), since a nearly uniform map looks like a flat tint after scaling. The raw maps are saved beside the figures (``.pt``).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gcvideo.engine.device_prep import DevicePrep
from gcvideo.models.resnet import context_block_label
from gcvideo.utils.errors import UsageError

__all__ = ["attention_paths", "context_input_hooks", "capture_context_inputs", "select_blocks", "gc_attention_maps",
           "nl_attention_maps", "default_queries", "parse_queries", "denormalize", "overlay_heatmap",
           "render_gc", "render_nl", "AttentionFigure", "visualize_attention"]


# ---------------------------------------------------------------------------
# Capturing block inputs
# ---------------------------------------------------------------------------
def _named_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    if not hasattr(model, "named_context_blocks"):
        raise TypeError(f"{type(model).__name__} has no named_context_blocks(); expected a gcvideo SlowResNet")
    return list(model.named_context_blocks())


def select_blocks(model: nn.Module, names: Optional[Sequence[str]] = None,
                  kind: Optional[type] = None) -> List[Tuple[str, nn.Module]]:
    """Context blocks by name: the short name figures show (``res4.5``, ``res4.5+``:
    ``context_block_label``), the full module name, or a unique part of one such as
    ``blocks.3.res_blocks.5``; None = all (of ``kind``). Unknown names raise ValueError listing the
    available ones."""
    blocks = _named_blocks(model)
    if kind is not None:
        blocks = [(n, m) for n, m in blocks if isinstance(m, kind)]
    if not names:
        return blocks
    out = []
    available = [f"{context_block_label(n)} ({n})" for n, _ in blocks]
    for want in names:
        hits = [(n, m) for n, m in blocks if want in (n, context_block_label(n))] or \
               [(n, m) for n, m in blocks if want in n]
        if len(hits) != 1:
            why = "matches no" if not hits else f"matches {len(hits)}"
            raise UsageError(f"block {want!r} {why} context block; available: {', '.join(available) or '(none)'}")
        if hits[0] not in out:
            out.append(hits[0])
    return out


@contextlib.contextmanager
def context_input_hooks(model: nn.Module, callback: Callable[[str, nn.Module, torch.Tensor], None],
                        names: Optional[Sequence[str]] = None) -> Iterator[None]:
    """While active, ``callback(name, block, x)`` sees the input x of each context block
    (all, or those named) on every forward (forward pre-hooks; removed on exit).

    A fused add-fusion ``ContextBlock`` at the pre_add position is run by its residual unit
    through ``ContextBlock.residual`` (one autograd Function for block + residual add + ReLU),
    which does not call the module, so its hooks would not fire: while active, hooked blocks
    use the plain-op path (``fused = False``; the same numbers), restored on exit.
    """
    blocks = dict(_named_blocks(model))
    wanted = list(blocks) if names is None else list(names)
    missing = [n for n in wanted if n not in blocks]
    if missing:
        raise UsageError(f"unknown context blocks {missing}; available: {', '.join(blocks) or '(none)'}")
    handles = []
    unfused = []
    try:
        for name in wanted:
            def hook(module, args, _name=name):
                callback(_name, module, args[0])
            handles.append(blocks[name].register_forward_pre_hook(hook))
            if getattr(blocks[name], "fused", False) is True:
                blocks[name].fused = False
                unfused.append(blocks[name])
        yield
    finally:
        for h in handles:
            h.remove()
        for m in unfused:
            m.fused = True


@torch.no_grad()
def capture_context_inputs(model: nn.Module, clip: torch.Tensor, names: Optional[Sequence[str]] = None
                           ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Forward ``clip`` (N, 3, T, H, W) in eval mode; (logits (N, K), {block: its input (N, C, T', H', W')})."""
    inputs: Dict[str, torch.Tensor] = {}

    def keep(name, _module, x):
        inputs[name] = x.detach().clone()  # a later in-place op must not change it

    model.eval()
    with context_input_hooks(model, keep, names):
        logits = model(clip)
    wanted = [n for n, _ in _named_blocks(model)] if names is None else list(names)
    lost = [n for n in wanted if n not in inputs]
    if lost:
        raise RuntimeError(f"the forward pass did not call context blocks {lost} as modules, so their inputs "
                           "could not be captured with forward pre-hooks")
    return logits, inputs


# ---------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------
@torch.no_grad()
def gc_attention_maps(model: nn.Module, clip: torch.Tensor, blocks: Optional[Sequence[str]] = None
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(logits, {block: attention (N, T', H', W')}) for context blocks with attention pooling."""
    from gcvideo.layers import ContextBlock

    chosen = select_blocks(model, blocks, ContextBlock)
    att_blocks = [(n, m) for n, m in chosen if m.pooling == "att"]
    if blocks and len(att_blocks) != len(chosen):
        avg = [n for n, m in chosen if m.pooling != "att"]
        raise UsageError(f"blocks {avg} use average pooling (uniform weights): no attention map to show")
    if not att_blocks:
        raise UsageError("the model has no context blocks with attention pooling (GC/SNL); "
                         "for a non-local model use nl_attention_maps")
    logits, inputs = capture_context_inputs(model, clip, [n for n, _ in att_blocks])
    maps = {n: m.attention(inputs[n]).float() for n, m in att_blocks}  # (N, T', H', W')
    return logits, maps


def _key_grid(block: nn.Module, t: int, h: int, w: int) -> Tuple[int, int, int]:
    if block.pool is None:
        return t, h, w
    k = block.pool.kernel_size
    k = (k, k, k) if isinstance(k, int) else tuple(k)
    return tuple((d - kk) // kk + 1 for d, kk in zip((t, h, w), k))  # MaxPool3d, stride = kernel


def default_queries(num_frames: int) -> List[Tuple[float, float, float]]:
    """Four query points on the middle frame: centre and three spread positions, as
    (frame index, y, x) with y, x fractions of the crop in [0, 1)."""
    t = float(num_frames // 2)
    return [(t, 0.5, 0.5), (t, 0.25, 0.25), (t, 0.25, 0.75), (t, 0.75, 0.5)]


def parse_queries(text: str) -> List[Tuple[float, float, float]]:
    """``"t,y,x;t,y,x"`` -> list of (frame, y, x); y, x are crop fractions in [0, 1]."""
    out = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        vals = part.split(",")
        if len(vals) != 3:
            raise UsageError(f"query {part!r}: expected t,y,x (frame index, then y and x as fractions 0..1)")
        t, y, x = int(vals[0]), float(vals[1]), float(vals[2])
        if not (0 <= y <= 1 and 0 <= x <= 1):
            raise UsageError(f"query {part!r}: y and x must be fractions of the frame in [0, 1]")
        out.append((t, y, x))
    if not out:
        raise UsageError(f"no query points in {text!r}")
    return out


@torch.no_grad()
def nl_attention_maps(model: nn.Module, clip: torch.Tensor, queries: Sequence[Tuple[float, float, float]],
                      blocks: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, Dict[str, Dict]]:
    """Attention maps of query positions in non-local blocks.

    queries: (frame index, y, x) with y, x crop fractions; each maps to the feature cell
    (t, floor(y * H'), floor(x * W')) of a block's input grid (N, C, T', H', W').
    Returns (logits, {block: {"maps": (N, Q, T_k, H_k, W_k), "cells": [(t, i, j)], "grid": (T', H', W'),
    "key_grid": (T_k, H_k, W_k)}}); each map is the row of the normalised affinity of that query.
    """
    from gcvideo.layers import NonLocalBlock

    chosen = select_blocks(model, blocks, NonLocalBlock)
    if not chosen:
        raise UsageError("the model has no non-local blocks; for a GC/SNL model use gc_attention_maps")
    logits, inputs = capture_context_inputs(model, clip, [n for n, _ in chosen])
    out = {}
    for name, block in chosen:
        x = inputs[name]
        t, h, w = x.shape[2:]
        cells = []
        for qt, qy, qx in queries:
            if not 0 <= int(qt) < t:
                raise UsageError(f"query frame {qt} is outside the clip's {t} frames at block {name}")
            cells.append((int(qt), min(int(qy * h), h - 1), min(int(qx * w), w - 1)))
        flat = torch.tensor([(ct * h + ci) * w + cj for ct, ci, cj in cells])
        att = block.affinity(x)  # (N, L, Lk)
        kt, kh, kw = _key_grid(block, t, h, w)
        maps = att[:, flat].float().reshape(x.shape[0], len(cells), kt, kh, kw)  # (N, Q, Tk, Hk, Wk)
        out[name] = {"maps": maps, "cells": cells, "grid": (t, h, w), "key_grid": (kt, kh, kw)}
    return logits, out


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
def denormalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (3, T, H, W) -> uint8 (T, H, W, 3) frames."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    x = (clip.float().cpu() * s + m).clamp(0, 1) * 255.0  # (3, T, H, W)
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)


def _upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(T, h, w) -> (T, H, W) bilinear."""
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def overlay_heatmap(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """uint8 (H, W, 3) frame + heat (H, W) in [0, 1] -> uint8 (H, W, 3) blend."""
    from matplotlib import colormaps

    colour = colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255.0  # (H, W, 3)
    out = (1 - alpha) * frame.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _mark(img: np.ndarray, y: int, x: int, radius: int = 3) -> np.ndarray:
    """Draw a query marker: a white-ringed red dot at (y, x)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    r = max(2, radius)
    d.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], fill=(255, 255, 255))
    d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0))
    return np.asarray(im)


def _labelled_grid(tiles: List[List[np.ndarray]], row_labels: List[str], col_labels: List[str],
                   title: str = "") -> bytes:
    """A PNG (bytes) of a tile grid with row/column labels (a matplotlib Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    rows, cols = len(tiles), len(tiles[0])
    h, w = tiles[0][0].shape[:2]
    scale = 1.6 / max(h, w)
    fig = Figure(figsize=(cols * w * scale + 1.2, rows * h * scale + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(tiles[r][c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _gif(frames: List[np.ndarray], duration_ms: int = 250) -> bytes:
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def _peak(m: torch.Tensor) -> float:
    """Largest weight of a map relative to a uniform map (1.0 = uniform attention)."""
    m = m.float()
    return float(m.max() / m.mean().clamp_min(1e-30))


def render_gc(frames: np.ndarray, maps: Dict[str, torch.Tensor], alpha: float = 0.5
              ) -> Tuple[bytes, bytes]:
    """frames uint8 (T, H, W, 3), maps {block: (T', h, w)} (one clip) -> (PNG grid, GIF).

    Grid: rows = frames, columns = the frame and one overlay per block. GIF: one image per
    frame, the same columns side by side.
    """
    t, hgt, wid = frames.shape[:3]
    cols = {}
    for name, m in maps.items():
        if m.shape[0] != t:  # feature time != input time: nearest frame
            m = F.interpolate(m[None, None].float(), size=(t,) + tuple(m.shape[1:]), mode="nearest")[0, 0]
        up = _upsample(m, (hgt, wid))  # (T, H, W)
        up = (up / up.max().clamp_min(1e-20)).numpy()
        cols[name] = [overlay_heatmap(frames[i], up[i], alpha) for i in range(t)]
    tiles = [[frames[i]] + [cols[n][i] for n in maps] for i in range(t)]
    peaks = {n: _peak(m) for n, m in maps.items()}
    png = _labelled_grid(tiles, [f"frame {i}" for i in range(t)],
                         ["input"] + [f"{context_block_label(n)} (peak {peaks[n]:.1f}x uniform)" for n in maps],
                         title="GC attention (softmax over all T*H*W positions; each block scaled to its max)")
    gif = _gif([np.concatenate(row, axis=1) for row in tiles])
    return png, gif


def render_nl(frames: np.ndarray, nl: Dict[str, Dict], queries: Sequence[Tuple[float, float, float]],
              alpha: float = 0.5) -> Tuple[bytes, bytes]:
    """frames uint8 (T, H, W, 3), nl = one clip's ``nl_attention_maps`` entries (maps (Q, Tk, Hk, Wk))
    -> (PNG grid, GIF). Grid: one row per (block, query), columns = frames; the query is marked
    (red dot) on its frame. GIF: per frame, all (block, query) tiles side by side."""
    t, hgt, wid = frames.shape[:3]
    tiles, labels = [], []
    for name, entry in nl.items():
        maps = entry["maps"]  # (Q, Tk, Hk, Wk)
        kt = maps.shape[1]
        for qi, (qt, qy, qx) in enumerate(queries):
            m = maps[qi]
            if kt != t:
                m = F.interpolate(m[None, None], size=(t,) + tuple(m.shape[1:]), mode="nearest")[0, 0]
            up = _upsample(m, (hgt, wid))
            up = (up / up.max().clamp_min(1e-20)).numpy()
            row = [overlay_heatmap(frames[i], up[i], alpha) for i in range(t)]
            py, px = min(int(qy * hgt), hgt - 1), min(int(qx * wid), wid - 1)
            row[int(qt)] = _mark(row[int(qt)], py, px, radius=max(2, hgt // 40))
            tiles.append(row)
            labels.append(f"{context_block_label(name)} q{qi} peak {_peak(maps[qi]):.1f}x\n"
                          f"t={int(qt)} y={qy:.2f} x={qx:.2f}")
    png = _labelled_grid(tiles, labels, [f"frame {i}" for i in range(t)],
                         title="non-local attention of query positions (red dot); each map scaled to its max")
    gif = _gif([np.concatenate([row[i] for row in tiles], axis=1) for i in range(t)])
    return png, gif


# ---------------------------------------------------------------------------
# The tool's library function
# ---------------------------------------------------------------------------
def attention_paths(out_dir: str) -> Dict[str, str]:
    """The files ``visualize_attention`` writes into ``out_dir`` ({"png", "gif", "maps"})."""
    return {"png": os.path.join(out_dir, "attention_grid.png"), "gif": os.path.join(out_dir, "attention.gif"),
            "maps": os.path.join(out_dir, "attention_maps.pt")}


@dataclass(frozen=True)
class AttentionFigure:
    """What ``visualize_attention`` draws: the clip's normalisation (DATA.MEAN, DATA.STD: applied to a uint8
    clip, undone for display), the blocks (``select_blocks`` names; None: every attention block), the
    non-local query points ((frame, y, x), y and x crop fractions; None: ``default_queries``) and the
    heatmap's opacity. A value it cannot draw is a ``UsageError`` here."""
    mean: Sequence[float]
    std: Sequence[float]
    blocks: Optional[Sequence[str]] = None
    queries: Optional[Sequence[Tuple[float, float, float]]] = None
    alpha: float = 0.5

    def __post_init__(self):
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UsageError(f"mean {list(self.mean)}, std {list(self.std)}: expected 3 values each (R, G, B)")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha {self.alpha}: the heatmap's opacity is a fraction in [0, 1]")


def visualize_attention(model: nn.Module, clip: torch.Tensor, out_dir: str, figure: AttentionFigure,
                        overwrite: bool = False, video: str = "") -> Dict[str, str]:
    """Run ``model`` on one ``clip`` (1, 3, T, S, S) (normalised, or uint8 and normalised here with
    ``figure.mean``/``figure.std``; moved to the model's device) and write to
    ``out_dir``: ``attention_grid.png``, ``attention.gif`` and ``attention_maps.pt`` (raw maps, queries,
    frames, logits; ``video`` is recorded there as the clip's source).

    GC/SNL models: every attention-pooling block (or ``figure.blocks``); non-local models: the maps
    of ``figure.queries`` ((frame, y, x), default ``default_queries``) in every NL block (or ``figure.blocks``).
    ``figure.mean``/``figure.std`` undo the clip's normalisation for display. Existing files are not
    overwritten unless ``overwrite``; files are written atomically. Returns {"png", "gif", "maps", "kind"}.
    """
    from gcvideo.layers import ContextBlock, NonLocalBlock
    from gcvideo.utils.io import atomic_save, atomic_write_bytes, refuse_existing

    if clip.dim() != 5 or clip.shape[0] != 1 or clip.shape[1] != 3:
        raise ValueError(f"visualize_attention needs one clip (1, 3, T, S, S), got {tuple(clip.shape)}")
    paths = attention_paths(out_dir)
    refuse_existing(list(paths.values()), overwrite)
    kinds = {type(m).__name__ for _, m in _named_blocks(model)}
    has_nl = any(isinstance(m, NonLocalBlock) for _, m in model.named_context_blocks())
    has_gc = any(isinstance(m, ContextBlock) and m.pooling == "att" for _, m in model.named_context_blocks())
    if not (has_nl or has_gc):
        raise UsageError(f"the model has no attention to show (context blocks: {', '.join(sorted(kinds)) or 'none'}"
                         "): it needs GC/SNL blocks (attention pooling) or non-local blocks")
    mean, std, blocks, queries, alpha = figure.mean, figure.std, figure.blocks, figure.queries, figure.alpha
    device = next(model.parameters()).device
    clip = DevicePrep(device, False, mean, std)(clip)  # (1, 3, T, S, S); a uint8 test view (DATA.EVAL_UINT8) normalised
    frames = denormalize(clip[0].float().cpu(), mean, std)  # (T, S, S, 3)
    if has_nl:
        queries = list(queries) if queries else default_queries(frames.shape[0])
        logits, nl = nl_attention_maps(model, clip, queries, blocks)
        one = {n: dict(e, maps=e["maps"][0].cpu()) for n, e in nl.items()}
        png, gif = render_nl(frames, one, queries, alpha)
        raw = {"kind": "nl", "queries": [list(q) for q in queries],
               "maps": {n: e["maps"] for n, e in one.items()}, "cells": {n: e["cells"] for n, e in one.items()}}
    else:
        logits, maps = gc_attention_maps(model, clip, blocks)
        one = {n: m[0].cpu() for n, m in maps.items()}  # (T', H', W')
        png, gif = render_gc(frames, one, alpha)
        raw = {"kind": "gc", "maps": one}
    raw.update(video=video, frames=torch.from_numpy(frames.copy()), logits=logits[0].float().cpu())
    atomic_write_bytes(paths["png"], png)
    atomic_write_bytes(paths["gif"], gif)
    atomic_save(raw, paths["maps"])
    return dict(paths, kind=raw["kind"])
