"""File access through iopath, atomic writes and safe checkpoint loading.

Everything gcvideo reads or writes goes through ``path_manager`` so that any
location an iopath handler serves works like a local folder.
"""
from __future__ import annotations

import errno
import io
import os
import re
import shutil
import uuid
import zipfile
from typing import Any, List, Sequence, Union

import torch
from iopath.common.file_io import NativePathHandler, PathManager

from gcvideo.utils.errors import UserError

__all__ = ["path_manager", "CheckpointError", "CorruptCheckpointError", "CheckpointMismatchError", "WriteError",
           "load_checkpoint_file", "verify_checkpoint_bytes", "move_aside", "atomic_write_bytes", "exported_model_kind", "refuse_exported_model",
           "atomic_save", "atomic_write_text", "disk_full_error", "local_path", "path_join", "remove_temporaries",
           "TEMPORARY_NAME", "refuse_existing"]

FILE_URI = "file://"


class _FileURIHandler(NativePathHandler):
    """``file:///abs/path`` is the local file ``/abs/path`` (iopath's native handler alone would
    treat the URI as a relative path and write ``./file:/abs/path``)."""

    def _get_supported_prefixes(self) -> List[str]:
        return [FILE_URI]

    def _get_path_with_cwd(self, path: str) -> str:
        return super()._get_path_with_cwd(path[len(FILE_URI):] if path.startswith(FILE_URI) else path)

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return self._get_path_with_cwd(path)

    def _mkdirs(self, path: str, **kwargs: Any) -> None:
        super()._mkdirs(self._get_path_with_cwd(path), **kwargs)

    def _rm(self, path: str, **kwargs: Any) -> None:
        super()._rm(self._get_path_with_cwd(path), **kwargs)


path_manager = PathManager()
path_manager.register_handler(_FileURIHandler())

# the temporary name of an atomic write: ``NAME.tmp-PID-HEX8``
TEMPORARY_NAME = re.compile(r".+\.tmp-\d+-[0-9a-f]{8}$")


def local_path(path: str):
    """The local file-system path of ``path`` (plain or ``file://``), or None for other iopath locations."""
    if "://" in path and not path.startswith(FILE_URI):
        return None
    return path_manager.get_local_path(path) if path.startswith(FILE_URI) else path


class WriteError(UserError, OSError):
    """A file could not be written (full disk, quota); its temporary file was removed."""

    def __str__(self) -> str:  # the one-line message, without OSError's "[Errno N]"
        return str(self.strerror)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be read safely or does not have the expected content."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file's own records prove it damaged: a zip record whose bytes do not match its
    CRC-32, or a zip file whose directory does not read (truncated, overwritten)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint that reads but does not fit the model of this config: keys or shapes differ, or
    the same weights would compute another function (``gcvideo.models``; its 2D-inflation case is
    ``InflationError``)."""


_ZIP_MAGIC = b"PK\x03\x04"


def verify_checkpoint_bytes(data: bytes, path: str) -> None:
    """CRC-check every record of a torch zip checkpoint (``torch.save``'s format since torch 1.6);
    :class:`CorruptCheckpointError` naming ``path`` and the first bad record. ``torch.load`` itself
    does not check the CRCs, so a flipped byte in tensor data would load silently. Legacy formats
    (torch < 1.6 files, Caffe2 ``.pkl`` pickles) hold no checksums: nothing to check."""
    if not data.startswith(_ZIP_MAGIC):
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            bad = z.testzip()  # reads every record and compares its CRC-32
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} could not be read: it is damaged (its zip directory "
                                     f"does not read: {e}); was it truncated or overwritten?") from None
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: record {bad} does not match its CRC-32 "
                                     "(bytes changed on disk or in transfer)")


def move_aside(path: str, suffix: str = ".corrupt") -> str:
    """Rename ``path`` to ``path + suffix`` (``.1``, ``.2``, ... when taken), never over an existing
    file; returns the new path. The file is kept, only out of the way."""
    new, n = path + suffix, 0
    while path_manager.exists(new):
        n += 1
        new = f"{path}{suffix}.{n}"
    local = local_path(path)
    if local is not None:
        os.rename(local, local_path(new))
    elif path_manager.mv(path, new) is False:
        raise OSError(f"cannot rename {path} to {new}")
    return new
def exported_model_kind(data: bytes) -> str:
    """"TorchScript", "torch.export" or "ONNX" when ``data`` (a file's bytes) is an exported model
    (a graph, as tools/export.py writes), else ""."""
    if data[:4] == b"PK\x03\x04":  # a zip: torch.save checkpoints, TorchScript and torch.export archives
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return ""
        if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names):
            return "TorchScript"
        if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
            return "torch.export"
        return ""
    head = data[:512]
    if head[:1] == b"\x08" and (b"\x12\x07pytorch" in head or b"onnx" in head):  # ModelProto: ir_version, producer
        return "ONNX"
    return ""


def refuse_exported_model(path: str, data: bytes) -> None:
    """A CheckpointError saying so when ``data`` (the bytes of ``path``) is an exported model."""
    kind = exported_model_kind(data)
    if kind:
        runner = {"ONNX": "onnxruntime", "TorchScript": "torch.jit.load"}.get(kind, "torch.export.load")
        raise CheckpointError(f"{path} is an exported {kind} model, not a checkpoint: give the training checkpoint "
                              f"or state dict it was exported from (an exported model runs with {runner})")


def load_checkpoint_file(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` through iopath, with a clear error.

    Files that would need arbitrary unpickling (pickled classes, code) are
    refused: we never run code from a checkpoint. An exported model (TorchScript, torch.export,
    ONNX) is refused as such: it holds a graph, not a checkpoint. Zip checkpoints are verified
    (``verify_checkpoint_bytes``: every record against its CRC-32).
    """
    if not path_manager.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path_manager.open(path, "rb") as f:
        data = f.read()
    if len(data) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    refuse_exported_model(path, data)
    verify_checkpoint_bytes(data, path)
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

    Local paths (plain or ``file://``): write a temporary file in the same folder, fsync, rename.
    Other iopath locations: write a temporary name, then move it into place; where the handler
    cannot move files (object stores such as S3), write the object in one upload, which those
    stores publish only when it is complete. A write that fails leaves no temporary file; a full
    disk (or quota) raises :class:`WriteError`, one line naming the path and the bytes needed.
    """
    local = local_path(path)
    if local is not None:
        _write_local(local, data)
    elif path.split("://", 1)[0] in _NO_RENAME:  # one upload of the whole object
        with path_manager.open(path, "wb") as f:
            f.write(data)
    else:
        parent = os.path.dirname(path)
        if parent:
            path_manager.mkdirs(parent)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with path_manager.open(tmp, "wb") as f:
                f.write(data)
            try:
                moved = path_manager.mv(tmp, path)
            except NotImplementedError:
                moved = False
        except BaseException:
            _remove_quietly(lambda: path_manager.rm(tmp))
            raise
        if moved is False:  # this location cannot rename: remember it, upload the object itself
            _NO_RENAME.add(path.split("://", 1)[0])
            path_manager.rm(tmp)
            atomic_write_bytes(path, data)


def _write_local(path: str, data: bytes) -> None:
    """Temporary file beside ``path``, fsync, rename, fsync of the folder."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove_quietly(lambda: os.remove(tmp))
        full = disk_full_error(e, path, len(data))
        if full is not None:
            raise full from None
        raise
    try:  # make the rename itself durable
        fd = os.open(parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def disk_full_error(e: BaseException, path: str, nbytes: int):
    """A one-line :class:`WriteError` for a full disk or quota (``e`` ENOSPC/EDQUOT) while writing
    ``nbytes`` to ``path``; None for any other error."""
    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    local = local_path(path)
    try:
        free = f", {_size(shutil.disk_usage(os.path.dirname(local) or '.').free)} free" if local else ""
    except OSError:
        free = ""
    return WriteError(e.errno, f"cannot write {path}: {os.strerror(e.errno).lower()} (it needs {_size(nbytes)}"
                      f"{free}); its temporary file was removed and earlier files are intact: free some space and "
                      "run the same command again")


def _remove_quietly(remove) -> None:
    try:
        remove()
    except (OSError, NotImplementedError):
        pass


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def remove_temporaries(folder: str) -> List[str]:
    """Delete the temporary files (``NAME.tmp-PID-HEX8``) that killed or failed writes left in
    ``folder``; returns their paths. Only call it while no other process writes there."""
    if not path_manager.exists(folder) or not path_manager.isdir(folder):
        return []
    stale = [path_join(folder, n) for n in sorted(path_manager.ls(folder)) if TEMPORARY_NAME.fullmatch(n)]
    for p in stale:
        path_manager.rm(p)
    return stale


def path_join(folder: str, name: str) -> str:
    """``folder/name`` for local paths and URIs alike."""
    return folder.rstrip("/") + "/" + name if "://" in folder else os.path.join(folder, name)


_NO_RENAME: set = set()  # URI schemes whose iopath handler cannot move files (learnt on first write)


def refuse_existing(paths: Union[str, Sequence[str]], overwrite: bool) -> None:
    """FileExistsError naming those of ``paths`` (one path or several) that exist, unless ``overwrite``
    (call it before any work)."""
    if overwrite:
        return
    existing = [p for p in ([paths] if isinstance(paths, str) else paths) if path_manager.exists(p)]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"{', '.join(existing)} already {verb}; refusing to overwrite "
                              f"{'it' if len(existing) == 1 else 'them'} (pass --overwrite)")


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
