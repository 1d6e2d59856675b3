"""The device a process computes on."""
from __future__ import annotations

import os
from typing import Union

import torch

__all__ = ["select_device"]


def select_device(want: Union[str, torch.device] = "auto") -> torch.device:
    """``"auto"``: cuda:LOCAL_RANK when CUDA is available, else the CPU; ``"cpu"``; ``"cuda"``
    (cuda:LOCAL_RANK, an error without CUDA); anything else (``"cuda:1"``, a torch.device) as given.

    A CUDA device also becomes the current one, so that its RNG state and nccl use it.
    """
    want = str(want)
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE = 'cuda' but CUDA is not available here; use DEVICE cpu or auto")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        # torchrun: one process per GPU of the machine, GPU LOCAL_RANK; launchers that show each
        # process only its own GPU(s) (srun --gpus-per-task): the index wraps around
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    if want == "auto":
        return torch.device("cpu")
    return torch.device(want)
