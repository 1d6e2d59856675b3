"""The papers' statistical analysis of non-local blocks (GCNet ICCVW 2019 Table 1; TPAMI 2020 Tables 1-3).

Reference: Y. Cao, J. Xu, S. Lin, F. Wei, H. Hu, "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond" (ICCVW 2019), Sec. 3.2, and "Global Context
Networks" (TPAMI 2020), Sec. 3: if the attention maps of different query positions
are nearly the same, a non-local block computes (nearly) one global context for all
positions, and can be replaced by a query-independent block (SNL / GC).

For one block and one clip with L = T*H*W query positions and L_k key positions:

- ``input``:  mean cosine distance between the block input features x_i (C-vectors), i in L.
- ``output``: the same for the block's output before fusion, z_i - x_i = BN(W_z y_i).
- ``att``:    the same for the attention maps of the query positions, the rows
  w_i = (w_i1 .. w_iLk) of the normalised pairwise weights f(x_i, x_j) / C(x).
- ``jsd``:    mean Jensen-Shannon divergence between the attention maps of query pairs
  (gaussian and embedded_gaussian only: their rows are probability distributions).
- ``entropy``: mean over queries of H(w_i) / ln(L_k), the attention maps' normalised entropy
  (1 = uniform, 0 = all weight on one key; gaussian and embedded_gaussian only). Small ``att``
  and ``jsd`` with ``entropy`` near 1 mean the maps are alike because they are nearly flat;
  with a low ``entropy`` they are alike *and* focused (the papers' observation).
- ``query``:  the same cosine distance for the query embeddings theta(x_i) (Ci-vectors, L of them).
- ``key``:    ... for the key embeddings phi(x_j) (Ci-vectors, L_k of them, after the key pool).
- ``product``: ... for the rows of the query-key products s_i = (theta(x_i)^T phi(x_j))_j, the
  attention logits of query i before the softmax (with the 1/sqrt(Ci) scale when the block
  uses it); the map that becomes ``att`` after the softmax.
  ``query``/``key`` exist for instantiations with embeddings (embedded_gaussian, dot_product,
  concat), ``product`` for those whose pairwise term is a dot product (embedded_gaussian,
  dot_product); otherwise they are None.

Cosine distance: d(u, v) = (1 - cos(u, v)) / 2, in [0, 1]; a zero vector has cosine 0 with
every vector, itself included. A mean over pairs is over all L^2 ordered pairs (i, j), i = j
included (the papers' 1/N_p^2 average); ``include_self=False`` gives the i != j mean. The
closed form  sum_ij cos(v_i, v_j) = ||sum_i v_i/||v_i|| ||^2  makes it O(L*D).

Jensen-Shannon divergence, natural log (nats, in [0, ln 2]):
JSD(P, Q) = (KL(P||M) + KL(Q||M)) / 2 = H(M) - (H(P) + H(Q)) / 2, M = (P + Q) / 2, with
0 log 0 = 0. Over all L^2 pairs it costs O(L^2 * L_k); when L > ``max_queries`` a uniform
subsample of ``max_queries`` query positions without replacement (``torch.Generator``
seeded with ``seed``) estimates the mean over distinct pairs, and the L^2 mean is
(1 - 1/L) times it (self pairs have JSD 0); exact (no subsample) when L <= max_queries.

Per-clip values are averaged over clips (each clip weighs the same).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gcvideo.utils.errors import UsageError

__all__ = ["mean_pairwise_cosine_distance", "mean_pairwise_jsd", "nonlocal_block_stats", "analyze_nonlocal",
           "NonLocalAnalysis", "ReportSource", "read_video_list", "DEFINITIONS",
           "NonlocalStatsAccumulator", "collect_nonlocal_stats", "format_stats_table", "STAT_COLUMNS"]

STAT_COLUMNS = ("input", "output", "att", "jsd", "entropy", "query", "key", "product")


def mean_pairwise_cosine_distance(v: torch.Tensor, include_self: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Mean of (1 - cos(v_i, v_j)) / 2 over all ordered pairs of the L vectors of ``v``.

    v: (..., L, D). Returns (...) in float64. O(L*D): with u_i = v_i / ||v_i|| (0 for a zero
    vector), sum_ij cos_ij = ||sum_i u_i||^2 and sum_i cos_ii = sum_i ||u_i||^2.
    """
    v = v.to(torch.float64)
    L = v.shape[-2]
    if L < 1 or (L < 2 and not include_self):
        raise ValueError(f"need at least {1 if include_self else 2} vectors, got L = {L}")
    norm = v.norm(dim=-1, keepdim=True)  # (..., L, 1)
    u = torch.where(norm > eps, v / norm.clamp_min(eps), torch.zeros_like(v))  # (..., L, D)
    s = u.sum(dim=-2)  # (..., D)
    total = (s * s).sum(dim=-1)  # (...,) = sum_ij cos_ij
    if include_self:
        mean_cos = total / (L * L)
    else:
        mean_cos = (total - (u * u).sum(dim=(-2, -1))) / (L * (L - 1))
    return (1.0 - mean_cos) / 2.0


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dim, 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def _offdiag_mean_jsd(p: torch.Tensor, chunk_elems: int = 1 << 23) -> torch.Tensor:
    """Mean JSD over ordered pairs i != j of the rows of p (m, K), float64."""
    m, k = p.shape
    h = _entropy(p)  # (m,)
    rows = max(1, chunk_elems // max(1, m * k))
    total = p.new_zeros(())
    for a in range(0, m, rows):
        pa = p[a:a + rows]  # (r, K)
        mix = (pa.unsqueeze(1) + p.unsqueeze(0)) / 2  # (r, m, K)
        jsd = _entropy(mix) - (h[a:a + rows].unsqueeze(1) + h.unsqueeze(0)) / 2  # (r, m)
        idx = torch.arange(a, a + pa.shape[0])
        jsd[torch.arange(pa.shape[0]), idx] = 0.0  # self pairs are 0 exactly
        total = total + jsd.clamp_min(0).sum()
    return total / (m * (m - 1))


def mean_pairwise_jsd(p: torch.Tensor, include_self: bool = True, max_queries: Optional[int] = 256,
                      seed: int = 0) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats) between the rows of ``p`` over ordered pairs.

    p: (..., L, K), rows are probability distributions. Returns (...) float64. Exact for
    L <= max_queries (or max_queries None); otherwise estimated from ``max_queries`` rows
    drawn without replacement (seeded), see the module docstring.
    """
    p = p.to(torch.float64)
    lead, (L, K) = p.shape[:-2], p.shape[-2:]
    if L < 2:
        raise ValueError(f"need at least 2 attention maps, got L = {L}")
    flat = p.reshape(-1, L, K)
    out = torch.empty(flat.shape[0], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    for n in range(flat.shape[0]):
        rows = flat[n]
        if max_queries is not None and L > max_queries:
            idx = torch.randperm(L, generator=g)[:max(2, max_queries)].sort().values
            rows = rows[idx]
        off = _offdiag_mean_jsd(rows)
        out[n] = off * (1.0 - 1.0 / L) if include_self else off
    return out.reshape(lead)


# ---------------------------------------------------------------------------
# One block
# ---------------------------------------------------------------------------
def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, D, L) channel-first features -> (N, L, D) rows of position vectors."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


@torch.no_grad()
def nonlocal_block_stats(block: nn.Module, x: torch.Tensor, max_queries: Optional[int] = 256,
                         seed: int = 0, include_self: bool = True) -> Dict[str, Optional[torch.Tensor]]:
    """Per-clip statistics of one ``NonLocalBlock`` on its input x (N, C, T, H, W).

    Returns {column: (N,) float64 tensor or None} for the columns in ``STAT_COLUMNS``.
    """
    inst = block.instantiation
    _, parts = block.forward(x, return_parts=True)  # .forward: no hooks (this may run inside a pre-hook)
    att = parts["attention"]  # (N, L, Lk)
    q, k = parts["query"], parts["key"]  # (N, Ci, L), (N, Ci, Lk); x itself for gaussian
    out: Dict[str, Optional[torch.Tensor]] = dict.fromkeys(STAT_COLUMNS)
    cos = lambda v: mean_pairwise_cosine_distance(v, include_self=include_self)  # noqa: E731
    out["input"] = cos(_rows(x))
    out["output"] = cos(_rows(parts["delta"]))
    out["att"] = cos(att)
    if inst in ("gaussian", "embedded_gaussian"):
        out["jsd"] = mean_pairwise_jsd(att, include_self=include_self, max_queries=max_queries, seed=seed)
        lk = att.shape[-1]
        out["entropy"] = _entropy(att.to(torch.float64)).mean(dim=1) / math.log(lk) if lk > 1 else None
    if inst != "gaussian":
        out["query"] = cos(_rows(q))
        out["key"] = cos(_rows(k))
    if inst in ("embedded_gaussian", "dot_product"):
        logits = torch.bmm(q.transpose(1, 2).to(torch.float64), k.to(torch.float64))  # (N, L, Lk)
        if inst == "embedded_gaussian" and block.scale:
            logits = logits * block.inner ** -0.5
        out["product"] = cos(logits)
    return out


@dataclass
class NonlocalStatsAccumulator:
    """Sums per-clip statistics per block; ``result()`` gives the means over clips."""
    max_queries: Optional[int] = 256
    seed: int = 0
    include_self: bool = True
    sums: Dict[str, Dict[str, float]] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    info: Dict[str, Dict] = field(default_factory=dict)

    def add(self, name: str, block: nn.Module, x: torch.Tensor) -> None:
        stats = nonlocal_block_stats(block, x, self.max_queries, self.seed, self.include_self)
        s = self.sums.setdefault(name, {})
        for col, v in stats.items():
            if v is not None:
                s[col] = s.get(col, 0.0) + float(v.sum())
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        if name not in self.info:
            t, h, w = x.shape[2:]
            lk = block.pool(x[:1, :1]).shape[2:] if block.pool is not None else (t, h, w)
            self.info[name] = dict(instantiation=block.instantiation, channels=block.channels,
                                   positions=t * h * w, key_positions=int(math.prod(lk)),
                                   feature_shape=[t, h, w],
                                   jsd_subsampled=bool(self.max_queries is not None and t * h * w > self.max_queries
                                                       and block.instantiation in ("gaussian", "embedded_gaussian")))

    def result(self) -> List[Dict]:
        rows = []
        for name, s in self.sums.items():
            n = self.counts[name]
            row = dict(block=name, clips=n, **self.info[name])
            row.update({col: (s[col] / n if col in s else None) for col in STAT_COLUMNS})
            rows.append(row)
        return rows


@torch.no_grad()
def collect_nonlocal_stats(model: nn.Module, clips: Iterable[torch.Tensor], *, max_queries: Optional[int] = 256,
                           seed: int = 0, include_self: bool = True,
                           blocks: Optional[Sequence[str]] = None) -> List[Dict]:
    """Run ``model`` on each batch of ``clips`` ((N, 3, T, H, W) tensors) and return, for every
    non-local block (or those named in ``blocks``: ``res4.5``, a full name or a unique part of one, as
    ``attention.select_blocks`` takes them), the statistics averaged over all clips.

    Block inputs are captured with forward pre-hooks on the context modules.
    """
    from gcvideo.analysis.attention import context_input_hooks, select_blocks
    from gcvideo.layers import NonLocalBlock

    named = [(n, m) for n, m in model.named_context_blocks() if isinstance(m, NonLocalBlock)]
    if not named:
        raise UsageError("the model has no non-local blocks to analyse" + (f" among {list(blocks)}" if blocks else ""))
    if blocks:
        named = select_blocks(model, blocks, NonLocalBlock)
    acc = NonlocalStatsAccumulator(max_queries=max_queries, seed=seed, include_self=include_self)
    model.eval()
    with context_input_hooks(model, lambda name, mod, x: acc.add(name, mod, x), names=[n for n, _ in named]):
        for clip in clips:
            model(clip)
    return acc.result()


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _block_cell(name: str) -> str:
    from gcvideo.models.resnet import context_block_label

    label = context_block_label(name)
    return name if label == name else f"{label} {name}"


def format_stats_table(rows: List[Dict]) -> str:
    """A fixed-width text table: one row per block, then the mean over blocks."""
    head = ["block", "inst", "L", "Lk"] + list(STAT_COLUMNS)
    body = [[_block_cell(r["block"]), r["instantiation"], str(r["positions"]), str(r["key_positions"])]
            + [_fmt(r[c]) for c in STAT_COLUMNS] for r in rows]
    if len(rows) > 1:
        mean = []
        for c in STAT_COLUMNS:
            vals = [r[c] for r in rows if r[c] is not None]
            mean.append(_fmt(sum(vals) / len(vals)) if vals else "-")
        body.append(["mean over blocks", "", "", ""] + mean)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


# ---------------------------------------------------------------------------
# The tool's library function: a trained model on a list of videos
# ---------------------------------------------------------------------------
DEFINITIONS = {
    "input": "mean cosine distance (1 - cos)/2 over all L^2 ordered pairs of query positions of the block "
             "input features x_i",
    "output": "same for the block output before fusion, z_i - x_i = BN(W_z y_i)",
    "att": "same for the attention maps of the query positions (rows of f(x_i, x_j)/C(x) over the key positions)",
    "entropy": "mean over query positions of the attention map's entropy divided by ln(L_k) (1 = uniform "
               "attention, 0 = one key); gaussian / embedded_gaussian",
    "jsd": "mean Jensen-Shannon divergence (nats) between the attention maps over all L^2 query pairs "
           "(gaussian / embedded_gaussian; query subsample when L > max_queries)",
    "query": "mean cosine distance over pairs of query embeddings theta(x_i)",
    "key": "mean cosine distance over pairs of key embeddings phi(x_j) (after the key max pool)",
    "product": "mean cosine distance over pairs of query rows of the query-key products theta(x_i)^T phi(x_j) "
               "(the attention logits before the softmax)",
}


def read_video_list(path: str, fmt: str = "auto", path_prefix: str = "", label_map: str = "",
                    num_classes: Optional[int] = None, clip_layout: str = "auto") -> List[str]:
    """Video paths from an annotation file (any format ``gcvideo.data.load_annotations`` reads, with
    these arguments; labels ignored) or from a plain list with one path a line (relative paths: to
    ``path_prefix``, else the file's folder)."""
    import os

    from gcvideo.data import AnnotationError, load_annotations
    from gcvideo.data.annotations import iter_lines
    from gcvideo.utils.io import path_manager

    try:
        return [r.path for r in load_annotations(path, fmt=fmt, path_prefix=path_prefix, label_map=label_map,
                                                 num_classes=num_classes, clip_layout=clip_layout)]
    except AnnotationError as e:
        if not path_manager.exists(path):
            raise
        lines = [ln.strip() for _, ln in iter_lines(path) if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines or any(len(ln.split()) != 1 and "\t" not in ln for ln in lines):
            raise AnnotationError(f"{e} (nor is it a list of video paths, one a line)") from e
        base = path_prefix or os.path.dirname(path)
        return [ln if os.path.isabs(ln) or "://" in ln else os.path.join(base, ln) for ln in lines]


@dataclass(frozen=True)
class NonLocalAnalysis:
    """What ``analyze_nonlocal`` measures and how (tools/analyze_nonlocal.py's options); a value it cannot
    use is a ``UsageError``."""
    max_queries: Optional[int] = 256  # JSD: query positions sampled when a block has more (None: all, exact)
    seed: int = 0  # seed of the JSD query sample
    include_self: bool = True  # pairs i = j in the means (the papers' 1/N_p^2 average)
    blocks: Optional[Tuple[str, ...]] = None  # non-local blocks to analyse (None: all), as select_blocks takes them
    batch_size: int = 4  # clips per forward pass (about: a video's clips stay together)

    def __post_init__(self):
        if self.max_queries is not None and self.max_queries < 1:
            raise UsageError(f"max queries {self.max_queries} must be at least 1 (--max-queries 0: all, exact)")
        if self.batch_size < 1:
            raise UsageError(f"batch size {self.batch_size} must be at least 1 (clips per forward pass)")
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))


@dataclass(frozen=True)
class ReportSource:
    """Where an analysis' numbers come from, recorded in its report (no effect on them)."""
    checkpoint: str = ""  # the model's weights file
    videos_file: str = ""  # the annotation file or video list


@torch.no_grad()
def analyze_nonlocal(model: nn.Module, dataset, analysis: NonLocalAnalysis = NonLocalAnalysis(), *,
                     source: ReportSource = ReportSource(), out_json: Optional[str] = None,
                     device: Optional[str] = None, overwrite: bool = False, log=print) -> Dict:
    """GCNet Tables 1-3 statistics of every non-local block of ``model`` over the videos of ``dataset``,
    measured as ``analysis`` says.

    ``dataset``: test views of the videos (``gcvideo.data.build_views_dataset``, usually with one
    centre crop); batches of about ``analysis.batch_size`` clips go to ``device`` (None: the model's);
    undecodable videos are listed in ``failed`` and skipped. Returns the report dict (also written
    to ``out_json`` atomically; an existing file is kept unless ``overwrite``); ``source`` (checkpoint,
    videos file) is recorded in it, and the clip layout (clips per video, crop, frames and
    sampling rate) is the dataset's.
    """
    import json

    from gcvideo.analysis.predict import model_device, resolve_device
    from gcvideo.utils.io import atomic_write_text, refuse_existing

    if out_json:
        refuse_existing(out_json, overwrite)
    a = analysis
    device = resolve_device(device) if device is not None else model_device(model)
    failed: List[Dict[str, str]] = []
    used = 0

    def clips():
        nonlocal used
        pending: List[torch.Tensor] = []
        for i in range(len(dataset)):
            item = dataset[i]
            if not item["ok"]:
                failed.append({"path": item["path"], "error": item["error"]})
                log(f"warning: skipping {item['path']}: {item['error']}")
                continue
            used += 1
            pending.append(item["video"])  # (V, 3, T, S, S)
            if sum(v.shape[0] for v in pending) >= a.batch_size:
                yield torch.cat(pending).to(device)
                pending = []
        if pending:
            yield torch.cat(pending).to(device)

    rows = collect_nonlocal_stats(model, clips(), max_queries=a.max_queries, seed=a.seed, include_self=a.include_self,
                                  blocks=a.blocks)
    if not used:
        raise UsageError(f"no video of {source.videos_file or 'the dataset'} could be decoded ({len(failed)} failed)")
    mean = {}
    for c in STAT_COLUMNS:
        vals = [r[c] for r in rows if r[c] is not None]
        mean[c] = sum(vals) / len(vals) if vals else None
    report = {"checkpoint": source.checkpoint, "videos_file": source.videos_file, "videos": used, "failed": failed,
              "clips_per_video": dataset.transform.num_clips, "crop": dataset.transform.crop,
              "clip": [dataset.sampling.num_frames, dataset.sampling.sampling_rate], "max_queries": a.max_queries,
              "seed": a.seed, "include_self": a.include_self, "distance": "cosine distance (1 - cos)/2; JSD in nats",
              "definitions": DEFINITIONS, "blocks": rows, "mean_over_blocks": mean}
    if out_json:
        atomic_write_text(out_json, json.dumps(report, indent=1) + "\n")
    return report
