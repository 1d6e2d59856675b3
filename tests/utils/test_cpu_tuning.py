"""tune_cpu (gcvideo/utils/cpu_tuning.py): threads and malloc for a CPU run in one call, one log line;
training's build_run and test() both use it."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = """
import json, sys, torch
sys.path.insert(0, {root!r})
from gcvideo.utils.cpu_tuning import tune_cpu
from gcvideo.utils.malloc import keep_freed_memory
threads, keep, device = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
torch.set_num_threads(7)
note = tune_cpu(threads, keep, 0, torch.device(device))
print(json.dumps({{"note": note, "threads": torch.get_num_threads(), "malloc": keep_freed_memory()}}))
"""


def _run(threads, keep, device="cpu"):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")
           and not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", CODE.format(root=ROOT), str(threads), str(int(keep)), device],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_threads_and_malloc_in_one_line():
    got = _run(2, True)
    assert got["threads"] == 2 and got["malloc"].startswith("malloc:"), got
    assert got["note"] == f"threads: 2 (TRAIN.CPU_THREADS); {got['malloc']}", got


def test_malloc_left_alone_when_off_and_nothing_on_cuda():
    got = _run(3, False)
    assert got["note"] == "threads: 3 (TRAIN.CPU_THREADS)" and got["threads"] == 3, got
    got = _run(3, True, device="cuda")
    assert got["note"] == "" and got["threads"] == 7, got
