"""engine_runner.py with the teardown order printed: when the DDP/SyncBN model is freed, when
destroy_process_group runs, when atexit runs (test_distributed.py::test_teardown_order)."""
import os
import runpy
import sys
import weakref

import torch.distributed as dist

import gcvideo.engine.distributed as du

RANK = os.environ.get("RANK", "0")
_convert, _destroy = du.convert_sync_batchnorm, dist.destroy_process_group


def convert(model, device_type):
    model = _convert(model, device_type)
    weakref.finalize(model, print, f"teardown rank{RANK}: model freed", flush=True)
    return model


def destroy(*args, **kwargs):
    print(f"teardown rank{RANK}: destroy_process_group", flush=True)
    return _destroy(*args, **kwargs)


du.convert_sync_batchnorm, dist.destroy_process_group = convert, destroy
if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_runner.py"), run_name="__main__")
