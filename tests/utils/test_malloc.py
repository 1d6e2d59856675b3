"""keep_freed_memory: freed tensor buffers are reused instead of page-faulted in again."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A step's worth of activations and gradients: forty tensors of 1-7 MB allocated, written and
# freed, 10 times; print the page faults of the last 5 rounds.
CODE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
if sys.argv[1] == "keep":
    from gcvideo.utils.malloc import keep_freed_memory
    print(keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    ts = [torch.ones((k % 7 + 1) << 18) for k in range(40)]
    del ts
for i in range(5):
    step()
f0 = faults()
for i in range(5):
    step()
print("FAULTS", faults() - f0)
"""
PAGES = 5 * sum((k % 7 + 1) << 20 for k in range(40)) // 4096  # 5 rounds, 4 KiB pages


def _faults(mode, env=None):
    proc = subprocess.run([sys.executable, "-c", CODE.format(root=ROOT), mode], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split("FAULTS")[1]), proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_are_reused():
    kept, out = _faults("keep")
    assert "glibc keeps freed memory" in out
    assert kept < 0.02 * PAGES, kept  # reused: (almost) no page faults
    # glibc's default gives freed memory back depending on the heap's history: run alone, this
    # loop faults in 90-99% of its pages every round; inside pytest it can happen not to


def test_left_alone_when_the_environment_chooses():
    _, out = _faults("keep", {"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert "left as is" in out


def test_engine_logs_it_on_cpu(tmp_path):
    from gcvideo.utils.malloc import tune_cpu_memory
    from gcvideo.config import get_cfg
    import torch

    cfg = get_cfg()
    assert cfg.TRAIN.CPU_KEEP_FREED_MEMORY
    assert tune_cpu_memory(cfg.TRAIN.CPU_KEEP_FREED_MEMORY, torch.device("cpu")).startswith("malloc:")
    assert tune_cpu_memory(cfg.TRAIN.CPU_KEEP_FREED_MEMORY, torch.device("cuda")) == ""
    cfg.TRAIN.CPU_KEEP_FREED_MEMORY = False
    assert tune_cpu_memory(cfg.TRAIN.CPU_KEEP_FREED_MEMORY, torch.device("cpu")) == ""
