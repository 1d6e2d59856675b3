"""Shared helpers of the engine tests: run the engine in a child process, compare checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from gcvideo.utils.io import load_checkpoint_file

RUNNER = Path(__file__).with_name("engine_runner.py")


def child_env():
    # PYTHONFAULTHANDLER: a child killed by a signal (SIGABRT, SIGSEGV) prints its Python stack
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_engine(out, mode="train", spec=None, *opts, nproc=1, timeout=300, runner=RUNNER):
    """Run tests/engine/engine_runner.py (under torchrun when nproc > 1); returns CompletedProcess."""
    args = [str(runner), str(out), mode, json.dumps(spec or {}), *[str(o) for o in opts]]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def checkpoint(out, name):
    return load_checkpoint_file(os.path.join(str(out), "checkpoints", name))


def assert_same_state(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs: max |diff| {(a[k].double() - b[k].double()).abs().max()}"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=atol, msg=lambda m: f"{k}: {m}")
