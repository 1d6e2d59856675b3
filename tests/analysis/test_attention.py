"""Attention maps: hooks, GC maps and NL query maps against direct float64 formulas, figures, the tool."""
import importlib.util
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gcvideo.analysis.attention import (capture_context_inputs, context_input_hooks, default_queries,
                                        denormalize, gc_attention_maps, nl_attention_maps, parse_queries,
                                        render_gc, render_nl, select_blocks, visualize_attention, AttentionFigure)
from gcvideo.config import get_cfg, load_cfg
from gcvideo.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL = os.path.join(ROOT, "tests", "data", "files", "carphone_pristine.mp4")
GC_LOC = [[], "all", "all", [0]]
NL_LOC = [[], [0], [0], []]


def _cfg(kind, location, **ctx):
    cfg = get_cfg()
    cfg.MODEL.WIDTH = 8
    cfg.MODEL.STAGE_DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.NUM_CLASSES = 8
    cfg.CONTEXT.TYPE = kind
    cfg.CONTEXT.LOCATION = location
    cfg.CONTEXT.ZERO_INIT = False
    for k, v in ctx.items():
        cfg.CONTEXT[k] = v
    return cfg


def _model(kind, location, seed=0, **ctx):
    torch.manual_seed(seed)
    m = build_model(_cfg(kind, location, **ctx)).eval()
    with torch.no_grad():  # sharper attention than the small default init
        for b in m.context_blocks():
            for name in ("conv_mask", "conv_theta", "conv_phi"):
                if hasattr(b, name):
                    getattr(b, name).weight.normal_(0, 0.5)
    return m


def _clip(n=2, t=4, s=48, seed=1):
    return torch.randn(n, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def test_hooks_capture_inputs_and_are_removed():
    m = _model("gc", GC_LOC)
    names = [n for n, _ in m.named_context_blocks()]
    assert names[0] == "blocks.2.res_blocks.0.branch2.context"
    seen = []
    with context_input_hooks(m, lambda n, mod, x: seen.append((n, tuple(x.shape)))):
        with torch.no_grad():
            m(_clip())
    assert [s[0] for s in seen] == names
    assert seen[0][1] == (2, 64, 4, 6, 6) and seen[-1][1] == (2, 256, 4, 2, 2)
    assert all(len(b._forward_pre_hooks) == 0 for b in m.context_blocks())
    # the captured input is what the block sees: block(input) + residual path reproduces the forward
    logits, inputs = capture_context_inputs(m, _clip(), [names[1]])
    assert list(inputs) == [names[1]] and logits.shape == (2, 8)
    with pytest.raises(ValueError, match="available"):
        with context_input_hooks(m, lambda *a: None, names=["nope"]):
            pass


def test_select_blocks_by_name_or_part():
    m = _model("gc", GC_LOC)
    assert [n for n, _ in select_blocks(m, ["blocks.4.res_blocks.0"])] == ["blocks.4.res_blocks.0.branch2.context"]
    assert len(select_blocks(m)) == 3
    with pytest.raises(ValueError, match="matches 3"):
        select_blocks(m, ["context"])
    with pytest.raises(ValueError, match="blocks.2.res_blocks.0.branch2.context"):
        select_blocks(m, ["blocks.9"])


def test_blocks_named_as_the_figure_labels_them(monkeypatch, tmp_path):
    """The figure's column names (res4.0, res3.0+) are names --blocks takes: one naming of blocks."""
    import gcvideo.analysis.attention as A
    from gcvideo.models.resnet import context_block_label

    gc = _model("gc", [[], [0], "all", [0]])  # pre_add: in the residual branch
    names = [n for n, _ in gc.named_context_blocks()]
    assert names == ["blocks.2.res_blocks.0.branch2.context", "blocks.3.res_blocks.0.branch2.context",
                     "blocks.4.res_blocks.0.branch2.context"]
    assert [context_block_label(n) for n in names] == ["res3.0", "res4.0", "res5.0"]  # blocks.i -> res(i+1)
    nl = _model("nl", NL_LOC)  # post_relu: after the residual add + ReLU
    assert [context_block_label(n) for n, _ in nl.named_context_blocks()] == ["res3.0+", "res4.0+"]
    assert context_block_label("head.proj") == "head.proj"
    titles = []
    real = A._labelled_grid
    monkeypatch.setattr(A, "_labelled_grid", lambda tiles, rows, cols, *a, **k: titles.append(cols) or
                        real(tiles, rows, cols, *a, **k))
    visualize_attention(gc, _clip(1), str(tmp_path / "gc"), AttentionFigure([0.45] * 3, [0.225] * 3))
    labels = [t.split(" (peak")[0] for t in titles[0][1:]]
    assert labels == ["res3.0", "res4.0", "res5.0"]
    for label, name in zip(labels, names):
        assert [n for n, _ in select_blocks(gc, [label])] == [name]  # the figure's name selects its block
    out = visualize_attention(gc, _clip(1), str(tmp_path / "gc4"),
                              AttentionFigure([0.45] * 3, [0.225] * 3, blocks=["res4.0"]))
    assert list(torch.load(out["maps"])["maps"]) == ["blocks.3.res_blocks.0.branch2.context"]
    assert [n for n, _ in select_blocks(nl, ["res4.0+"])] == ["blocks.3.res_blocks.0.context"]
    with pytest.raises(ValueError, match=r"available: res3.0\+ \(blocks.2.res_blocks.0.context\)"):
        select_blocks(nl, ["res9.9"])


def test_gc_maps_equal_float64_softmax():
    m = _model("gc", GC_LOC)
    x = _clip()
    logits, maps = gc_attention_maps(m, x)
    _, inputs = capture_context_inputs(m, x)
    for name, blk in m.named_context_blocks():
        a = maps[name]  # (N, T, H, W)
        xi = inputs[name].double()  # (N, C, T, H, W)
        w = blk.conv_mask.weight.double().reshape(-1)
        ref = torch.softmax(torch.einsum("c,nct->nt", w, xi.flatten(2)) + blk.conv_mask.bias.double(), dim=1)
        assert a.shape == xi.shape[:1] + xi.shape[2:]
        torch.testing.assert_close(a.double().flatten(1), ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a.sum(dim=(1, 2, 3)).double(), torch.ones(2, dtype=torch.float64))
    se = _model("se", GC_LOC)
    with pytest.raises(ValueError, match="attention pooling"):
        gc_attention_maps(se, x)


@pytest.mark.parametrize("inst", ["embedded_gaussian", "gaussian", "dot_product"])
def test_nl_query_maps_equal_direct_formula(inst):
    m = _model("nl", NL_LOC, NL_INSTANTIATION=inst)
    x = _clip(t=4, s=64)
    queries = [(0, 0.0, 0.0), (3, 0.99, 0.5), (2, 0.5, 0.3)]
    _, nl = nl_attention_maps(m, x, queries)
    _, inputs = capture_context_inputs(m, x)
    for name, blk in m.named_context_blocks():
        e = nl[name]
        xi = inputs[name].double()  # (N, C, T, H, W)
        n, c, t, h, w = xi.shape
        assert e["grid"] == (t, h, w) and e["key_grid"] == (t, h // 2, w // 2)
        assert e["cells"][0] == (0, 0, 0) and e["cells"][1] == (3, h - 1, w // 2)
        pooled = torch.nn.functional.max_pool3d(xi, (1, 2, 2))
        if inst == "gaussian":
            q, k = xi.flatten(2), pooled.flatten(2)
        else:
            th = {k2: v.double() for k2, v in blk.conv_theta.state_dict().items()}
            ph = {k2: v.double() for k2, v in blk.conv_phi.state_dict().items()}
            q = torch.nn.functional.conv3d(xi, th["weight"], th["bias"]).flatten(2)
            k = torch.nn.functional.max_pool3d(torch.nn.functional.conv3d(xi, ph["weight"], ph["bias"]),
                                               (1, 2, 2)).flatten(2)
        for qi, (ct, ci, cj) in enumerate(e["cells"]):
            pos = (ct * h + ci) * w + cj
            s = torch.einsum("nc,nck->nk", q[:, :, pos], k)  # (N, Lk)
            ref = torch.softmax(s, dim=1) if inst != "dot_product" else s / k.shape[-1]
            torch.testing.assert_close(e["maps"][:, qi].double().flatten(1), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        nl_attention_maps(m, x, [(9, 0.5, 0.5)])


def test_query_parsing():
    assert parse_queries("0,0.5,0.5; 3,0.1,0.9") == [(0, 0.5, 0.5), (3, 0.1, 0.9)]
    assert default_queries(8)[0] == (4.0, 0.5, 0.5)
    for bad in ("1,2", "0,1.5,0.2", ""):
        with pytest.raises(ValueError):
            parse_queries(bad)


def _png(data):
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im


def _gif_frames(data):
    im = Image.open(io.BytesIO(data))
    assert im.format == "GIF"
    return im.n_frames, im.size


def test_render_gc_and_nl():
    m = _model("gc", GC_LOC)
    x = _clip(n=1, t=4, s=48)
    _, maps = gc_attention_maps(m, x)
    frames = denormalize(x[0], [0.45] * 3, [0.225] * 3)
    assert frames.shape == (4, 48, 48, 3) and frames.dtype == np.uint8
    png, gif = render_gc(frames, {n: v[0] for n, v in maps.items()})
    assert _png(png).size[0] > 100
    assert _gif_frames(gif) == (4, (48 * 4, 48))  # input + 3 blocks side by side, one image per frame
    nlm = _model("nl", NL_LOC)
    q = default_queries(4)
    _, nl = nl_attention_maps(nlm, x, q)
    png, gif = render_nl(frames, {n: dict(e, maps=e["maps"][0]) for n, e in nl.items()}, q)
    _png(png)
    assert _gif_frames(gif) == (4, (48 * 2 * len(q), 48))  # 2 blocks x 4 queries


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from gcvideo.data import make_toy_dataset

    d = tmp_path_factory.mktemp("attn")
    make_toy_dataset(str(d / "toy"), num_train=2, num_val=0, size=64, num_frames=16, workers=1)
    return d


def _write(d, kind, location, extra=""):
    model = _model(kind, location)
    ckpt = d / f"{kind}.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    cfg_file = d / f"{kind}.yaml"
    cfg_file.write_text(
        f"MODEL:\n  WIDTH: 8\n  STAGE_DEPTHS: [1, 1, 1, 1]\n  NUM_CLASSES: 8\n"
        f"CONTEXT:\n  TYPE: {kind}\n  LOCATION: {json.dumps(location)}\n{extra}"
        "DATA:\n  NUM_FRAMES: 4\n  SAMPLING_RATE: 2\n  TEST_CROP_SIZE: 64\n  DECODER: pyav\n")
    return str(cfg_file), str(ckpt)


def test_visualize_gc_on_toy_video(toy):
    from gcvideo.analysis.predict import decode_views
    from gcvideo.data import build_views_dataset
    from gcvideo.models import build_model_from_checkpoint

    cfg_file, ckpt = _write(toy, "gc", GC_LOC)
    cfg = load_cfg(cfg_file)
    video = str(toy / "toy" / "videos" / "train" / "000001.mp4")
    out = toy / "gc_out"
    model = build_model_from_checkpoint(cfg, ckpt)
    clip = decode_views(build_views_dataset(cfg, [video], num_clips=1, num_crops=1))[0]["video"][:1]  # (1, 3, T, S, S)
    figure = AttentionFigure(cfg.DATA.MEAN, cfg.DATA.STD, blocks=["blocks.2", "blocks.4"])
    res = visualize_attention(model, clip, str(out), figure, video=video)
    assert res["kind"] == "gc"
    assert _gif_frames(open(res["gif"], "rb").read()) == (4, (64 * 3, 64))
    _png(open(res["png"], "rb").read())
    raw = torch.load(res["maps"])
    assert sorted(raw["maps"]) == ["blocks.2.res_blocks.0.branch2.context", "blocks.4.res_blocks.0.branch2.context"]
    assert raw["frames"].shape == (4, 64, 64, 3) and raw["video"] == video
    before = open(res["png"], "rb").read()
    with pytest.raises(FileExistsError, match="overwrite"):
        visualize_attention(model, clip, str(out), AttentionFigure(cfg.DATA.MEAN, cfg.DATA.STD))
    assert open(res["png"], "rb").read() == before
    # a uint8 view (DATA.EVAL_UINT8) gives the same frames and maps as the float view it normalises to
    u8 = (denormalize(clip[0], cfg.DATA.MEAN, cfg.DATA.STD))  # (T, S, S, 3)
    u8 = torch.from_numpy(u8).permute(3, 0, 1, 2)[None].contiguous()  # (1, 3, T, S, S) uint8
    res2 = visualize_attention(model, u8, str(out), figure, overwrite=True)
    raw2 = torch.load(res2["maps"])
    assert torch.equal(raw2["frames"], raw["frames"])
    for name in raw["maps"]:
        torch.testing.assert_close(raw2["maps"][name], raw["maps"][name], rtol=1e-2, atol=1e-4)
    with pytest.raises(ValueError, match="one clip"):
        visualize_attention(model, clip[0], str(out), AttentionFigure(cfg.DATA.MEAN, cfg.DATA.STD), overwrite=True)


def _tool():
    spec = importlib.util.spec_from_file_location("viz_tool", os.path.join(ROOT, "tools", "visualize_attention.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_visualize_tool_nl_on_real_video(toy, capsys):
    cfg_file, ckpt = _write(toy, "nl", NL_LOC)
    out = toy / "nl_out"
    tool = _tool()
    rc = tool.main(["--config", cfg_file, "--checkpoint", ckpt, REAL, "--out", str(out),
                    "--queries", "1,0.5,0.5;2,0.2,0.8"])
    text, err = capsys.readouterr()
    assert rc == 0, err
    assert "nl attention" in text
    raw = torch.load(str(out / "attention_maps.pt"))
    assert raw["kind"] == "nl" and raw["queries"] == [[1, 0.5, 0.5], [2, 0.2, 0.8]]
    m = raw["maps"]["blocks.2.res_blocks.0.context"]  # (Q, Tk, Hk, Wk): res3 at 64 px -> 8x8, keys 4x4
    assert m.shape == (2, 4, 4, 4)
    torch.testing.assert_close(m.sum(dim=(1, 2, 3)), torch.ones(2))
    assert _gif_frames((out / "attention.gif").read_bytes()) == (4, (64 * 4, 64))
    # errors: an unreadable video, a GC-less/NL-less model
    bad = toy / "bad.mp4"
    bad.write_bytes(b"nothing")
    assert tool.main(["--config", cfg_file, "--checkpoint", ckpt, str(bad), "--out", str(toy / "x")]) == 2
    assert "bad.mp4" in capsys.readouterr().err


def test_attention_figure_refuses_what_it_cannot_draw(tmp_path, capsys):
    """AttentionFigure: an opacity outside [0, 1] or a normalisation without 3 values is a UsageError
    naming it; the tool answers ``--alpha 1.5`` with one error line, exit 2, before it loads the checkpoint."""
    from gcvideo.utils.errors import UsageError

    fig = AttentionFigure([0.45] * 3, [0.225] * 3, blocks=["res4.0"], alpha=1.0)
    assert (fig.blocks, fig.queries, fig.alpha) == (["res4.0"], None, 1.0)
    for alpha in (-0.1, 1.5):
        with pytest.raises(UsageError, match=rf"alpha {alpha}: the heatmap's opacity is a fraction in \[0, 1\]"):
            AttentionFigure([0.45] * 3, [0.225] * 3, alpha=alpha)
    with pytest.raises(UsageError, match=r"mean \[0.45\], std \[0.225, 0.225, 0.225\]: expected 3 values each"):
        AttentionFigure([0.45], [0.225] * 3)
    toy_cfg = os.path.join(ROOT, "configs", "toy", "slow_gc_toy.yaml")
    rc = _tool().main(["video.mp4", "--config", toy_cfg, "DATA.LABEL_MAP", "", "--checkpoint",
                       str(tmp_path / "nope.pth"), "--out", str(tmp_path / "vis"), "--alpha", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: alpha 1.5: the heatmap's opacity is a fraction in [0, 1]"], err
    assert not (tmp_path / "vis").exists()


def test_hooks_fire_for_fused_blocks_and_restore_fused():
    """Fused pre_add GC blocks run through ContextBlock.residual; the hooks must still see them."""
    m = _model("gc", GC_LOC)
    blocks = m.context_blocks()
    assert all(b.fused for b in blocks)
    x = _clip()
    with torch.no_grad():
        ref = m(x)
        logits, inputs = capture_context_inputs(m, x)
    assert len(inputs) == len(blocks)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    assert all(b.fused for b in blocks)  # restored


def test_visualize_tool_shows_progress(toy, capsys):
    """tools/visualize_attention.py: the video's decoding is shown as a bar on stderr (1 video)."""
    from gcvideo.analysis.predict import decode_views
    from gcvideo.data import build_views_dataset

    cfg_file, ckpt = _write(toy, "gc", GC_LOC)
    video = str(toy / "toy" / "videos" / "train" / "000001.mp4")
    items = decode_views(build_views_dataset(load_cfg(cfg_file), [video, video], 1, 1), progress=True)
    assert len(items) == 2 and "decode: 100%" in capsys.readouterr().err
    rc = _tool().main(["--config", cfg_file, "--checkpoint", ckpt, video, "--out", str(toy / "progress_out")])
    text, err = capsys.readouterr()
    assert rc == 0, err
    assert "gc attention" in text and "decode: 100%" in err and "1/1" in err and "video" in err


def test_visualize_tool_refuses_existing_outputs_before_any_work(tmp_path, monkeypatch, capsys):
    """An --out folder that already holds the figures is refused with one line before the model is built
    and the video decoded (the README walk met the refusal only after both)."""
    cfg_file = tmp_path / "gc.yaml"
    cfg_file.write_text("CONTEXT:\n  TYPE: gc\n")
    out = tmp_path / "vis"
    out.mkdir()
    (out / "attention.gif").write_bytes(b"a user's figure")
    tool = _tool()

    def work_started(*a, **k):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(tool, "build_model_from_checkpoint", work_started)
    monkeypatch.setattr(tool, "decode_views", work_started)
    rc = tool.main(["--config", str(cfg_file), "--checkpoint", str(tmp_path / "ckpt.pth"), REAL, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [f"error: {out / 'attention.gif'} already exists; refusing to overwrite it "
                                        "(pass --overwrite)"]
    assert (out / "attention.gif").read_bytes() == b"a user's figure"
