"""TRAIN.CPU_THREADS: the main process's intra-op threads on CPU runs (gcvideo/utils/threads.py)."""
import json
import os
import subprocess
import sys

import pytest

from gcvideo.utils.threads import main_process_threads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("setting, workers, cores, env, expected", [
    (0, 2, 2, {}, 1),                              # the toy job on 2 cores: 2 - 2 -> at least 1
    (0, 0, 2, {}, 2),                              # no loader workers: every core
    (0, 1, 2, {}, 1),
    (0, 4, 16, {}, 12),                            # 16 - 4
    (0, 4, 16, {"LOCAL_WORLD_SIZE": "2"}, 4),      # 16 / 2 processes - 4
    (0, 8, 16, {"LOCAL_WORLD_SIZE": "4"}, 1),      # 16 / 4 - 8 < 1 -> 1
    (0, 2, 2, {"OMP_NUM_THREADS": "2"}, None),     # the environment chose: left as is
    (3, 2, 2, {"OMP_NUM_THREADS": "1"}, 3),        # a positive setting is used as given
    (5, 0, 2, {}, 5),
])
def test_thread_count(setting, workers, cores, env, expected):
    assert main_process_threads(setting, workers, cores, env) == expected


CODE = """
import json, os, sys, torch
sys.path.insert(0, {root!r})
from gcvideo.utils.threads import tune_cpu_threads
setting, workers, device, affinity = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if affinity != "all":
    os.sched_setaffinity(0, {{int(affinity)}})
torch.set_num_threads(7)
note = tune_cpu_threads(setting, workers, torch.device(device))
print(json.dumps({{"note": note, "threads": torch.get_num_threads(), "cores": len(os.sched_getaffinity(0))}}))
"""


def _run(setting, workers, device="cpu", affinity="all", **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-c", CODE.format(root=ROOT), str(setting), str(workers), device, affinity],
                          capture_output=True, text=True, timeout=120, env=dict(base, **env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_sets_torch_threads_from_the_usable_cores():
    got = _run(0, 1)
    assert got["threads"] == max(1, got["cores"] - 1), got
    assert got["note"] == f"threads: {got['threads']} ({got['cores']} cores, 1 process(es), 1 loader workers)"
    got = _run(0, 0, affinity=str(min(os.sched_getaffinity(0))))  # taskset to one core: one thread
    assert got["cores"] == 1 and got["threads"] == 1, got
    got = _run(0, 0, LOCAL_WORLD_SIZE="2")
    assert got["threads"] == max(1, got["cores"] // 2), got


def test_environment_and_explicit_setting_and_cuda():
    got = _run(0, 2, OMP_NUM_THREADS="3")  # OMP_NUM_THREADS set: torch's count stays (7, set before)
    assert got["threads"] == 7 and "OMP_NUM_THREADS=3, left as is" in got["note"], got
    got = _run(2, 4, OMP_NUM_THREADS="1")
    assert got["threads"] == 2 and got["note"] == "threads: 2 (TRAIN.CPU_THREADS)", got
    got = _run(0, 0, device="cuda")  # a CUDA run: untouched, nothing logged
    assert got == {"note": "", "threads": 7, "cores": got["cores"]}, got



@pytest.mark.parametrize("requested, cores, env, expected", [
    (4, 2, {}, 2),                             # the default 4 workers on the 2-core machine: 2
    (2, 2, {}, 2),
    (0, 2, {}, 0),                             # no workers stays no workers
    (4, 16, {}, 4),                            # room for all of them
    (8, 16, {"LOCAL_WORLD_SIZE": "4"}, 4),     # 16 cores / 4 processes
    (4, 2, {"LOCAL_WORLD_SIZE": "4"}, 1),      # fewer cores than processes: at least 1
])
def test_loader_workers(requested, cores, env, expected):
    from gcvideo.utils.threads import loader_workers

    assert loader_workers(requested, cores, env) == expected
