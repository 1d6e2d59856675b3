"""The non-local statistics against direct float64 computations (explicit pairwise loops/matrices)."""
import importlib.util
import json
import math
import os

import pytest
import torch

from gcvideo.analysis.attention import capture_context_inputs
from gcvideo.analysis.nonlocal_stats import (STAT_COLUMNS, NonLocalAnalysis, ReportSource, analyze_nonlocal,
                                             collect_nonlocal_stats,
                                             format_stats_table, mean_pairwise_cosine_distance, mean_pairwise_jsd,
                                             nonlocal_block_stats, read_video_list)
from gcvideo.config import get_cfg, load_cfg
from gcvideo.layers import NonLocalBlock
from gcvideo.utils.errors import UsageError
from gcvideo.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL = os.path.join(ROOT, "tests", "data", "files", "carphone_pristine.mp4")
F64 = torch.float64


# ---- float64 references with explicit loops ----
def _cos(u, v):
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
    if nu == 0 or nv == 0:
        return 0.0
    return sum(a * b for a, b in zip(u, v)) / (nu * nv)


def ref_cos_dist(v, include_self=True):
    """v: (L, D) -> mean over pairs of (1 - cos)/2, by a double loop."""
    rows = v.to(F64).tolist()
    L = len(rows)
    tot, n = 0.0, 0
    for i in range(L):
        for j in range(L):
            if i == j and not include_self:
                continue
            tot += (1 - _cos(rows[i], rows[j])) / 2
            n += 1
    return tot / n


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ref_jsd(p, include_self=True):
    rows = p.to(F64).tolist()
    L = len(rows)
    tot, n = 0.0, 0
    for i in range(L):
        for j in range(L):
            if i == j and not include_self:
                continue
            m = [(a + b) / 2 for a, b in zip(rows[i], rows[j])]
            tot += 0.5 * _kl(rows[i], m) + 0.5 * _kl(rows[j], m)
            n += 1
    return tot / n


# ---- the closed forms ----
@pytest.mark.parametrize("include_self", [True, False])
def test_cosine_distance_closed_form(include_self):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 17, 6, generator=g)
    v[1, 4] = 0.0  # a zero vector: cosine 0 with everything
    v[2] = v[2, :1] * torch.rand(17, 1, generator=g) + 1e-3 * v[2]  # nearly parallel vectors: small distance
    got = mean_pairwise_cosine_distance(v, include_self=include_self)
    assert got.dtype == F64 and got.shape == (3,)
    for n in range(3):
        assert abs(float(got[n]) - ref_cos_dist(v[n], include_self)) < 1e-12
    assert float(got[2]) < 1e-3
    # identical vectors: 0; two opposite vectors over distinct pairs: 1
    assert float(mean_pairwise_cosine_distance(torch.ones(5, 3))) == pytest.approx(0, abs=1e-15)
    assert float(mean_pairwise_cosine_distance(torch.tensor([[1.0, 0], [-1.0, 0]]), include_self=False)) == 1.0


@pytest.mark.parametrize("include_self", [True, False])
def test_jsd_exact_for_small_L(include_self):
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(2, 13, 9, generator=g) * 2, dim=-1)
    p[0, 3] = torch.tensor([1.0] + [0.0] * 8)  # zeros: 0 log 0 = 0
    got = mean_pairwise_jsd(p, include_self=include_self, max_queries=256)
    for n in range(2):
        assert abs(float(got[n]) - ref_jsd(p[n], include_self)) < 1e-12
    # bounds: identical rows 0, disjoint supports ln 2 (distinct pairs)
    same = torch.full((4, 5), 0.2)
    assert float(mean_pairwise_jsd(same)) == pytest.approx(0, abs=1e-15)
    eye = torch.eye(4)
    assert float(mean_pairwise_jsd(eye, include_self=False)) == pytest.approx(math.log(2), abs=1e-12)


def test_jsd_query_subsample():
    """L > max_queries: the distinct-pair mean over a seeded sample, times (1 - 1/L) with self pairs."""
    g = torch.Generator().manual_seed(2)
    L = 40
    p = torch.softmax(torch.randn(L, 7, generator=g), dim=-1)
    got = float(mean_pairwise_jsd(p, max_queries=12, seed=5))
    idx = torch.randperm(L, generator=torch.Generator().manual_seed(5))[:12].sort().values
    assert got == pytest.approx(ref_jsd(p[idx], include_self=False) * (1 - 1 / L), abs=1e-12)
    exact = ref_jsd(p)
    assert float(mean_pairwise_jsd(p, max_queries=None)) == pytest.approx(exact, abs=1e-12)
    assert abs(got - exact) / exact < 0.25  # an estimate of the same quantity
    assert float(mean_pairwise_jsd(p, max_queries=12, seed=5)) == got  # deterministic


# ---- one block against a float64 re-implementation ----
def _block(inst, scale=False, seed=0):
    torch.manual_seed(seed)
    b = NonLocalBlock(16, instantiation=inst, pool=(1, 2, 2), scale=scale, zero_init=False).eval()
    with torch.no_grad():
        for m in b.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.normal_(0, 0.3)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
        b.bn.running_mean.normal_(0, 0.1)
        b.bn.running_var.uniform_(0.5, 1.5)
        b.bn.weight.normal_(1, 0.2)
    return b


def _conv(x, conv):
    return torch.nn.functional.conv3d(x, conv.weight.to(F64), conv.bias.to(F64) if conv.bias is not None else None)


def _direct(block, x):
    """Every statistic of one clip x (1, C, T, H, W) in float64, pairwise by loops."""
    inst = block.instantiation
    x = x.to(F64)
    pool = lambda t: torch.nn.functional.max_pool3d(t, (1, 2, 2))  # noqa: E731
    if inst == "gaussian":
        q, k = x.flatten(2)[0], pool(x).flatten(2)[0]  # (C, L), (C, Lk)
    else:
        q, k = _conv(x, block.conv_theta).flatten(2)[0], pool(_conv(x, block.conv_phi)).flatten(2)[0]
    g = pool(_conv(x, block.conv_g)).flatten(2)[0]  # (Ci, Lk)
    s = q.t() @ k  # (L, Lk)
    if inst == "embedded_gaussian" and block.scale:
        s = s / math.sqrt(block.inner)
    if inst in ("gaussian", "embedded_gaussian"):
        att = torch.softmax(s, dim=1)
    elif inst == "dot_product":
        att = s / k.shape[1]
    else:
        w = block.concat_project.weight.to(F64).reshape(2, -1)
        att = torch.relu((w[0] @ q)[:, None] + (w[1] @ k)[None, :]) / k.shape[1]
    y = (g @ att.t()).reshape(1, block.inner, *x.shape[2:])
    bn = block.bn
    wz = _conv(y, block.conv_out)
    delta = (wz - bn.running_mean.to(F64).view(1, -1, 1, 1, 1)) / torch.sqrt(
        bn.running_var.to(F64).view(1, -1, 1, 1, 1) + bn.eps) * bn.weight.to(F64).view(1, -1, 1, 1, 1) + \
        bn.bias.to(F64).view(1, -1, 1, 1, 1)
    out = {"input": ref_cos_dist(x.flatten(2)[0].t()), "output": ref_cos_dist(delta.flatten(2)[0].t()),
           "att": ref_cos_dist(att), "jsd": None, "entropy": None, "query": None, "key": None, "product": None}
    if inst in ("gaussian", "embedded_gaussian"):
        out["jsd"] = ref_jsd(att)
        rows = att.tolist()
        out["entropy"] = sum(-sum(a * math.log(a) for a in r if a > 0) for r in rows) / len(rows) / math.log(len(rows[0]))
    if inst != "gaussian":
        out["query"], out["key"] = ref_cos_dist(q.t()), ref_cos_dist(k.t())
    if inst in ("embedded_gaussian", "dot_product"):
        out["product"] = ref_cos_dist(s)
    return out


@pytest.mark.parametrize("inst,scale", [("embedded_gaussian", False), ("embedded_gaussian", True),
                                        ("gaussian", False), ("dot_product", False), ("concat", False)])
def test_block_stats_match_float64_direct(inst, scale):
    block = _block(inst, scale)
    x = torch.randn(2, 16, 2, 4, 6, generator=torch.Generator().manual_seed(3))  # L = 48, Lk = 12
    got = nonlocal_block_stats(block, x, max_queries=None)
    assert set(got) == set(STAT_COLUMNS)
    for n in range(2):
        ref = _direct(block, x[n:n + 1])
        for col in STAT_COLUMNS:
            if ref[col] is None:
                assert got[col] is None, col
            else:
                assert float(got[col][n]) == pytest.approx(ref[col], rel=1e-4, abs=1e-6), (col, n)


def _nl_model(inst="embedded_gaussian"):
    cfg = get_cfg()
    cfg.MODEL.WIDTH = 8
    cfg.MODEL.STAGE_DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.NUM_CLASSES = 8
    cfg.CONTEXT.TYPE = "nl"
    cfg.CONTEXT.LOCATION = [[], [0], [0], []]
    cfg.CONTEXT.NL_INSTANTIATION = inst
    cfg.CONTEXT.ZERO_INIT = False
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_collect_over_clips_is_the_mean_of_per_clip_stats():
    m = _nl_model()
    clips = [torch.randn(2, 3, 4, 48, 48, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    rows = collect_nonlocal_stats(m, clips, max_queries=None)
    assert [r["block"] for r in rows] == ["blocks.2.res_blocks.0.context", "blocks.3.res_blocks.0.context"]
    assert rows[0]["positions"] == 4 * 6 * 6 and rows[0]["key_positions"] == 4 * 3 * 3 and rows[0]["clips"] == 4
    per = []
    for c in clips:
        _, inputs = capture_context_inputs(m, c)
        blk = dict(m.named_context_blocks())[rows[1]["block"]]
        per.append(nonlocal_block_stats(blk, inputs[rows[1]["block"]], max_queries=None))
    for col in ("input", "att", "jsd", "entropy", "product"):
        want = float(torch.cat([p[col] for p in per]).mean())
        assert rows[1][col] == pytest.approx(want, rel=1e-9)
    text = format_stats_table(rows)
    assert "blocks.2.res_blocks.0.context" in text and "mean over blocks" in text
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS = 8, [1, 1, 1, 1]
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION = "gc", "all"
    with pytest.raises(ValueError, match="no non-local"):
        collect_nonlocal_stats(build_model(cfg), [])


# ---- the tool on the toy set and a real video ----
@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    from gcvideo.data import make_toy_dataset

    d = tmp_path_factory.mktemp("nlstats")
    toy = d / "toy"
    make_toy_dataset(str(toy), num_train=2, num_val=2, size=48, num_frames=16, workers=1)
    m = _nl_model()
    ckpt = d / "nl.pth"
    torch.save({"model": m.state_dict()}, ckpt)
    cfg_file = d / "nl.yaml"
    cfg_file.write_text(
        "MODEL:\n  WIDTH: 8\n  STAGE_DEPTHS: [1, 1, 1, 1]\n  NUM_CLASSES: 8\n"
        "CONTEXT:\n  TYPE: nl\n  LOCATION: [[], [0], [0], []]\n"
        f"DATA:\n  LABEL_MAP: {json.dumps(str(toy / 'classes.txt'))}\n  NUM_FRAMES: 4\n  SAMPLING_RATE: 2\n"
        "  TEST_CROP_SIZE: 48\n  DECODER: pyav\n  NUM_WORKERS: 0\n")
    return dict(dir=d, toy=toy, ckpt=str(ckpt), cfg_file=str(cfg_file), model=m)


def test_read_video_list(toy_setup, tmp_path):
    cfg = load_cfg(toy_setup["cfg_file"])
    kw = dict(fmt=cfg.DATA.FORMAT, path_prefix=cfg.DATA.PATH_PREFIX, label_map=cfg.DATA.LABEL_MAP,
              num_classes=cfg.MODEL.NUM_CLASSES, clip_layout=cfg.DATA.CLIP_LAYOUT)
    paths = read_video_list(str(toy_setup["toy"] / "val.csv"), **kw)
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
    plain = tmp_path / "list.txt"
    plain.write_text(f"# videos\n{REAL}\nrel.mp4\n")
    assert read_video_list(str(plain), **kw) == [REAL, str(tmp_path / "rel.mp4")]
    assert read_video_list(str(plain), path_prefix="/videos") == [REAL, "/videos/rel.mp4"]


def test_read_video_list_non_utf8_is_one_error(tmp_path):
    """A plain list in another encoding: the fallback reader names file:line too (no UnicodeDecodeError)."""
    from gcvideo.data import AnnotationError

    lst = tmp_path / "list.txt"
    lst.write_bytes("a.mp4\ncaf\u00e9.mp4\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"list.txt:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        read_video_list(str(lst))


def test_analyze_library_matches_direct(toy_setup, tmp_path):
    """analyze_nonlocal on a real video = collect_nonlocal_stats on the dataset's clip."""
    from gcvideo.data import build_views_dataset
    from gcvideo.models import build_model_from_checkpoint

    cfg = load_cfg(toy_setup["cfg_file"])
    lst = tmp_path / "videos.txt"
    lst.write_text(REAL + "\n" + str(tmp_path / "missing.mp4") + "\n")
    out = tmp_path / "r.json"
    model = build_model_from_checkpoint(cfg, toy_setup["ckpt"])
    dataset = build_views_dataset(cfg, read_video_list(str(lst)), 2, 1)
    rep = analyze_nonlocal(model, dataset, NonLocalAnalysis(max_queries=None), out_json=str(out),
                           source=ReportSource(toy_setup["ckpt"], str(lst)), log=lambda m: None)
    assert rep["videos"] == 1 and len(rep["failed"]) == 1 and "missing.mp4" in rep["failed"][0]["path"]
    assert rep["clips_per_video"] == 2 and rep["crop"] == 48 and rep["clip"] == [4, 2]
    assert rep["checkpoint"] == toy_setup["ckpt"] and rep["videos_file"] == str(lst)
    clip = build_views_dataset(cfg, [REAL], 2, 1)[0]["video"]  # (2, 3, 4, 48, 48)
    rows = collect_nonlocal_stats(toy_setup["model"], [clip], max_queries=None)
    for a, b in zip(rep["blocks"], rows):
        for col in STAT_COLUMNS:
            assert (a[col] is None) == (b[col] is None)
            if a[col] is not None:
                assert a[col] == pytest.approx(b[col], rel=1e-6)
    assert json.loads(out.read_text())["blocks"][0]["block"] == rows[0]["block"]
    with pytest.raises(FileExistsError):
        analyze_nonlocal(model, dataset, out_json=str(out), log=lambda m: None)


def test_analyze_tool_on_toy_set(toy_setup, capsys):
    spec = importlib.util.spec_from_file_location("nl_tool", os.path.join(ROOT, "tools", "analyze_nonlocal.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = toy_setup["dir"] / "toy_stats.json"
    rc = tool.main(["--config", toy_setup["cfg_file"], "--checkpoint", toy_setup["ckpt"], "--csv",
                    str(toy_setup["toy"] / "val.csv"), "--json", str(out), "--max-queries", "16"])
    text, err = capsys.readouterr()
    assert rc == 0, err
    assert "blocks.2.res_blocks.0.context" in text and "jsd" in text
    rep = json.loads(out.read_text())
    assert rep["videos"] == 2 and rep["max_queries"] == 16
    r0 = rep["blocks"][0]
    assert r0["jsd_subsampled"] and r0["positions"] == 4 * 6 * 6
    for col in STAT_COLUMNS:
        assert 0.0 <= r0[col] <= 1.0
    # without --json the report goes to OUTPUT_DIR/nonlocal_stats_<checkpoint name>.json
    run_dir = toy_setup["dir"] / "run_default"
    rc = tool.main(["--config", toy_setup["cfg_file"], "--checkpoint", toy_setup["ckpt"], "--csv",
                    str(toy_setup["toy"] / "val.csv"), "--max-queries", "16", "--opts", "OUTPUT_DIR", str(run_dir)])
    assert rc == 0, capsys.readouterr().err
    stem = os.path.splitext(os.path.basename(toy_setup["ckpt"]))[0]
    assert json.loads((run_dir / f"nonlocal_stats_{stem}.json").read_text())["blocks"][0]["jsd"] == r0["jsd"]
    # a config without non-local blocks: a clear error
    gc_cfg = toy_setup["dir"] / "gc.yaml"
    gc_cfg.write_text("MODEL:\n  WIDTH: 8\n  STAGE_DEPTHS: [1, 1, 1, 1]\n  NUM_CLASSES: 8\n")
    gc_ckpt = toy_setup["dir"] / "plain.pth"
    torch.save(build_model(load_cfg(str(gc_cfg))).state_dict(), gc_ckpt)
    rc = tool.main(["--config", str(gc_cfg), "--checkpoint", str(gc_ckpt), "--csv", str(toy_setup["toy"] / "val.csv")])
    assert rc == 2 and "non-local" in capsys.readouterr().err


def test_nonlocal_analysis_refuses_bad_values_and_the_tool_says_so_before_loading(tmp_path, capsys):
    """NonLocalAnalysis (the analysis options as one object) checks its values; the tool builds it
    first, so a bad one is one error line before any config, checkpoint or video is read."""
    assert NonLocalAnalysis(blocks=["res3.0"]).blocks == ("res3.0",)
    for bad, message in ((dict(batch_size=0), "batch size 0 must be at least 1"),
                         (dict(max_queries=-1), "max queries -1 must be at least 1")):
        with pytest.raises(UsageError, match=message):
            NonLocalAnalysis(**bad)
    spec = importlib.util.spec_from_file_location("nl_tool", os.path.join(ROOT, "tools", "analyze_nonlocal.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rc = tool.main(["--config", str(tmp_path / "nope.yaml"), "--checkpoint", str(tmp_path / "nope.pth"),
                    "--csv", str(tmp_path / "nope.csv"), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: batch size 0 must be at least 1 (clips per forward pass)\n"
