"""The one seam between the reference ContextBlock and its fused path (gcvideo/layers/fused).

The fused path runs only in eager CPU runs on plain tensors; under tracing, torch.export,
torch.compile, a FakeTensor, a dispatch mode, a non-CPU tensor or ``fused=False`` the seam
returns None and the block's reference ops run, so those tools see standard ops and no
Python-side pointer access or ``.item()`` (which broke torch.export and split compiled graphs).
"""
import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from gcvideo.config import get_cfg
from gcvideo.layers import ContextBlock, fused
from gcvideo.layers.fused import functions
from gcvideo.models import build_model

C = 16


def _block(**kw):
    torch.manual_seed(0)
    b = ContextBlock(C, 0.25, zero_init=False, **kw)
    return b


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_seam_decides_where_the_fused_path_runs(monkeypatch):
    x = torch.randn(2, C, 2, 3, 3)
    gc = _block()
    assert fused.applies(gc, x) and fused.applies(gc, x, x)
    assert not fused.applies(_block(fused=False), x)
    assert not fused.applies(_block(pooling="avg", fusion="mul", norm="none"), x)  # SE: nothing to fuse
    assert fused.applies(_block(pooling="att", fusion="mul"), x)  # the fused pooling
    assert not fused.applies(gc, x.to("meta"))  # not a CPU tensor
    assert not fused.applies(gc, x, x.to("meta"))
    with _Counter():
        assert not fused.applies(gc, x)  # a dispatch mode is recording
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not fused.applies(gc, fake)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not fused.applies(gc, x)


def test_the_block_calls_the_seam_and_falls_back_to_the_reference(monkeypatch):
    gc = _block().double()
    x, s = torch.randn(2, C, 2, 3, 3, dtype=torch.float64), torch.randn(2, C, 2, 3, 3, dtype=torch.float64)
    calls = []
    real = functions.context_add
    monkeypatch.setattr(functions, "context_add", lambda *a, **k: calls.append(a[2] is not None) or real(*a, **k))
    fast, fast_res = gc(x), gc.residual(x, s)
    assert calls == [False, True]
    gc.fused = False
    torch.testing.assert_close(gc(x), fast, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gc.residual(x, s), fast_res, rtol=1e-12, atol=1e-12)
    assert calls == [False, True]  # the reference ran


def _tiny_model():
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS, cfg.MODEL.NUM_CLASSES, cfg.MODEL.DROPOUT = 8, [1, 1, 1, 1], 5, 0.0
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION, cfg.CONTEXT.ZERO_INIT = "gc", "all", False
    torch.manual_seed(0)
    model = build_model(cfg)
    assert all(b.fused for b in model.context_blocks())
    return model


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compile_has_no_graph_breaks_and_matches_eager(train):
    import torch._dynamo

    model = _tiny_model().train(train)
    x = torch.randn(2, 3, 4, 32, 32)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(copy.deepcopy(model))(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    run = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    want, got = eager(x), run(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if train:  # the training step: the backward of the compiled graph against eager autograd
        want.square().sum().backward()
        got.square().sum().backward()
        for (n, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5 * max(1.0, p.grad.abs().max().item()),
                                       msg=n)


def test_torch_export_of_the_fused_model_equals_eager():
    model = _tiny_model().eval()
    x = torch.randn(2, 3, 4, 32, 32)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("softmax" in t for t in targets) and any("layer_norm" in t for t in targets)
    x2 = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want = model(x2)  # eager: the fused path
        got = ep.module()(x2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want.abs().max() > 1e-3
