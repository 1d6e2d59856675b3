"""File access through iopath, atomic writes and safe checkpoint loading.

Everything gcvideo reads or writes goes through ``path_manager`` so that any
location an iopath handler serves works like a local folder.
"""
from __future__ import annotations

import io
import os
import uuid
from typing import Any

import torch
from iopath.common.file_io import PathManager

path_manager = PathManager()


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read safely or does not have the expected content."""


def load_checkpoint_file(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` through iopath, with a clear error.

    Files that would need arbitrary unpickling (pickled classes, code) are
    refused: we never run code from a checkpoint.
    """
    if not path_manager.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path_manager.open(path, "rb") as f:
        data = f.read()
    if len(data) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError variants
        msg = str(e).split("\n")[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "WeightsUnpickler" in str(e):
            raise CheckpointError(
                f"checkpoint {path} needs arbitrary unpickling to load ({msg}); gcvideo only loads "
                "tensors and plain containers (torch.load(weights_only=True)). Re-save it as a plain "
                "state dict: torch.save(model.state_dict(), 'clean.pth') in a trusted environment."
            ) from e
        raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch file "
                              f"({type(e).__name__}: {msg}); is it truncated or not a checkpoint?") from e


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a half-written file.

    Local paths: write a temporary file in the same folder, fsync, rename.
    Other iopath locations: write a temporary name, then move it into place; where the handler
    cannot move files (object stores such as S3), write the object in one upload, which those
    stores publish only when it is complete.
    """
    parent = os.path.dirname(path)
    if parent:
        path_manager.mkdirs(parent)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    local = path_manager.get_local_path(parent or ".") if _is_local(path) else None
    if local is not None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            fd = os.open(parent or ".", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
    elif path.split("://", 1)[0] in _NO_RENAME:  # one upload of the whole object
        with path_manager.open(path, "wb") as f:
            f.write(data)
    else:
        with path_manager.open(tmp, "wb") as f:
            f.write(data)
        try:
            moved = path_manager.mv(tmp, path)
        except NotImplementedError:
            moved = False
        if moved is False:  # this location cannot rename: remember it, upload the object itself
            _NO_RENAME.add(path.split("://", 1)[0])
            path_manager.rm(tmp)
            atomic_write_bytes(path, data)


_NO_RENAME: set = set()  # URI schemes whose iopath handler cannot move files (learnt on first write)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")
