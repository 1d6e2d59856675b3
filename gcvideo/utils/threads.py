"""How many intra-op threads the main process computes with on CPU runs.

PyTorch starts one intra-op thread per core it sees. A CPU training or test run also has
DATA.NUM_WORKERS loader processes decoding on the same cores (each with one thread, as the
DataLoader sets), so by default the machine runs more busy threads than it has cores and
they take turns: on a 2-core machine with 2 loader workers, the toy job's training ran 1.42x
faster with the main process on one thread (bench/results/toy.md). PyTorch's CPU
performance guide gives the same advice: threads x processes should not exceed the cores.

``TRAIN.CPU_THREADS`` 0 (automatic) gives the main process the cores it may run on
(``os.sched_getaffinity``, so ``taskset`` and container CPU sets count), shared among the
processes of this machine (``LOCAL_WORLD_SIZE``, set by torchrun), less one per loader
worker, and at least 1. ``OMP_NUM_THREADS`` in the environment (which torchrun sets to 1
for several processes) is then left as is; a positive value is used as given. CUDA runs
are left alone: their main process feeds the GPU rather than computing.

DataLoader workers are sized to the machine the same way (``loader_workers``): DATA.NUM_WORKERS,
but at most this process's share of the usable cores (usable cores // LOCAL_WORLD_SIZE, at least
1), so a 4-worker config on a 2-core machine runs 2 workers and PyTorch's "exceeds the suggested
max number of workers" warning does not come.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

__all__ = ["usable_cores", "main_process_threads", "loader_workers", "tune_cpu_threads"]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def main_process_threads(setting: int, num_workers: int, cores: int,
                         env: Mapping[str, str]) -> Optional[int]:
    """The thread count for ``setting`` (TRAIN.CPU_THREADS), or None to leave torch's own.

    ``setting`` > 0: that many. 0: None where ``OMP_NUM_THREADS`` is set in ``env``, else
    ``cores`` // LOCAL_WORLD_SIZE - ``num_workers``, at least 1.
    """
    if setting > 0:
        return setting
    if env.get("OMP_NUM_THREADS"):
        return None
    local_processes = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // local_processes - max(0, num_workers))


def loader_workers(requested: int, cores: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> int:
    """The DataLoader workers a process runs for ``requested`` (DATA.NUM_WORKERS): at most ``cores``
    (default: the usable cores) // LOCAL_WORLD_SIZE of ``env`` (default: os.environ), at least 1; 0 stays 0."""
    if requested <= 0:
        return 0
    cores = usable_cores() if cores is None else cores
    local_processes = max(1, int((os.environ if env is None else env).get("LOCAL_WORLD_SIZE", "1")))
    return min(requested, max(1, cores // local_processes))


def tune_cpu_threads(setting: int, num_workers: int, device) -> str:
    """Set torch's intra-op threads for a CPU run (see the module's text); returns a log line, "" on CUDA."""
    if getattr(device, "type", str(device)) != "cpu":
        return ""
    num_workers = loader_workers(num_workers)  # the workers the engine's loaders will run
    threads = main_process_threads(setting, num_workers, usable_cores(), os.environ)
    if threads is None:
        return f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, left as is)"
    torch.set_num_threads(threads)
    if setting > 0:
        return f"threads: {threads} (TRAIN.CPU_THREADS)"
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return f"threads: {threads} ({usable_cores()} cores, {local} process(es), {num_workers} loader workers)"
