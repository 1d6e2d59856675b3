"""The private torch APIs gcvideo needs, each behind one function of gcvideo/utils/torch_private.py:
each function is held to its behaviour here, so a torch release that removes or changes one fails
here (loudly), and no other gcvideo module calls them."""
import ast
import os
import pathlib

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import Dataset

from gcvideo.utils.torch_private import (BatchNormBase, add_relu_, dispatch_mode_active, end_loader_workers,
                                         forward_hooks_registered)

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "gcvideo"
PRIVATE = ("_get_current_dispatch_mode", "_global_forward_hooks", "_global_forward_pre_hooks", "_forward_hooks",
           "_forward_pre_hooks", "_add_relu_", "_shutdown_workers", "_get_iterator", "_iterator", "_BatchNorm")


def test_private_torch_names_are_used_in_torch_private_only():
    used = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "name", None) \
                if isinstance(node, (ast.FunctionDef, ast.alias)) else None
            if name in PRIVATE:
                used.setdefault(name, set()).add(path.relative_to(PACKAGE).as_posix())
    assert used and all(files == {"utils/torch_private.py"} for files in used.values()), used


class _Recorder(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_dispatch_mode_active_sees_a_users_mode_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert not dispatch_mode_active()
    with _Recorder():
        assert dispatch_mode_active()
    with FakeTensorMode():
        assert dispatch_mode_active()
    assert not dispatch_mode_active()


@pytest.mark.parametrize("register", [
    lambda m, f: m.register_forward_hook(lambda mod, i, o: f()),
    lambda m, f: m.register_forward_pre_hook(lambda mod, i: f()),
    lambda m, f: register_module_forward_hook(lambda mod, i, o: f()),
    lambda m, f: register_module_forward_pre_hook(lambda mod, i: f()),
], ids=["module", "module_pre", "global", "global_pre"])
def test_forward_hooks_registered_is_true_exactly_while_a_hook_would_run(register):
    m, calls = nn.Identity(), []
    assert not forward_hooks_registered(m)
    handle = register(m, lambda: calls.append(1))
    try:
        assert forward_hooks_registered(m)
        m(torch.zeros(1))
        assert calls == [1]  # the hook the function reported does run
    finally:
        handle.remove()
    assert not forward_hooks_registered(m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_add_relu_is_relu_of_the_sum_in_place(dtype, memory_format):
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 8, 3, 4, 5, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    term = torch.randn(2, 8, 1, 1, 1, generator=g, dtype=dtype)
    want = torch.relu(out + term)
    ptr = out.data_ptr()
    got = add_relu_(out, term)
    assert got.data_ptr() == ptr and torch.equal(got, want) and torch.equal(out, want)
    assert (want == 0).any() and (want > 0).any()  # both sides of the ReLU were exercised


class _Pid(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return os.getpid()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_end_loader_workers_ends_a_persistent_loaders_workers_now():
    loader = torch.utils.data.DataLoader(_Pid(), batch_size=2, num_workers=2, persistent_workers=True)
    pids = {int(p) for b in loader for p in b}
    assert len(pids) == 2 and os.getpid() not in pids and all(_alive(p) for p in pids)
    keep = iter(loader)  # a reference held elsewhere: the iterator is not collected
    end_loader_workers(loader)
    assert not any(_alive(p) for p in pids)
    del keep
    # loaders without a persistent iterator: nothing to end
    end_loader_workers(torch.utils.data.DataLoader(_Pid(), batch_size=2))
    end_loader_workers(torch.utils.data.DataLoader(_Pid(), batch_size=2, num_workers=1, persistent_workers=True))


def test_batch_norm_base_is_the_base_of_every_batch_norm_and_nothing_else():
    from gcvideo.engine.distributed import CPUSyncBatchNorm

    for bn in (torch.nn.BatchNorm1d(4), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm3d(4), torch.nn.SyncBatchNorm(4),
               CPUSyncBatchNorm(4)):
        assert isinstance(bn, BatchNormBase), type(bn)
    for other in (torch.nn.LayerNorm(4), torch.nn.GroupNorm(2, 4), torch.nn.InstanceNorm3d(4)):
        assert not isinstance(other, BatchNormBase), type(other)
