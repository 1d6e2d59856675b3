"""Reading any weights file into a flat state dict (tensors by key), whatever wrote it.

The entry point is :func:`read_weights_file` (a path or an in-memory dict -> :class:`WeightsFile`:
the state dict, skipped entries and the writer's metadata); :func:`load_weights_object` returns
the raw object a file holds, :func:`unwrap_state_dict` the tensors inside such an object.

- torch files (zip or legacy) through ``torch.load(weights_only=True)`` (``gcvideo.utils.io``); zip
  files after checking every record's CRC-32 (a damaged file is a ``CorruptCheckpointError``), legacy
  torch files and Caffe2 pickles unverified (their formats hold no checksums);
- other pickles (Caffe2 ``.pkl`` blob files, ``{"blobs": {name: ndarray}}``) through the
  restricted, size-bounded unpickler of :mod:`gcvideo.models.safe_pickle`;
- the tensors are found under the usual wrapper keys (``state_dict``, ``model``,
  ``model_state``, ...) and a ``module.`` (DataParallel) prefix is removed.

Every error names the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np
import torch

from gcvideo.models.safe_pickle import UnsafePickleError, safe_pickle_load
from gcvideo.utils.io import CheckpointError, load_checkpoint_file, path_manager, refuse_exported_model

__all__ = ["load_weights_object", "unwrap_state_dict", "caffe2_blobs_to_tensors", "is_caffe2_blobs",
           "WeightsFile", "read_weights_file"]

_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy (< 1.6) format starts with its pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict", "module")


def load_weights_object(path: str) -> Any:
    """The object a weights file holds, read safely: torch files through
    :func:`gcvideo.utils.io.load_checkpoint_file` (``weights_only=True``), other pickles (Caffe2
    ``.pkl``) with the restricted unpickler. Errors name the file."""
    if not path_manager.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path_manager.open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    is_torch = head.startswith(_ZIP_MAGIC) or head.startswith(_TORCH_LEGACY_MAGIC)
    if is_torch or not head:
        return load_checkpoint_file(path)
    with path_manager.open(path, "rb") as f:
        data = f.read()
    refuse_exported_model(path, data)  # ONNX
    try:
        return safe_pickle_load(data)
    except UnsafePickleError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from e
    except Exception as e:  # truncated / not a pickle
        raise CheckpointError(f"checkpoint {path} is neither a torch checkpoint nor a readable pickle "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def unwrap_state_dict(obj: Any, source: str = "<state dict>") -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (``{'state_dict': ...}``, ``{'model': ...}``, ...), with a
    ``module.`` prefix removed; an error naming ``source`` if there is none."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if tensors and len(tensors) >= len(obj) / 2:
            break
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
        seen += 1
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {source} holds a {type(obj).__name__}, expected a state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError(f"checkpoint {source} holds no tensors (looked under "
                              f"{'/'.join(_WRAPPERS)} keys too)")
    return out


def caffe2_blobs_to_tensors(obj: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``{"blobs": {name: ndarray}}`` (or a flat name -> ndarray dict) -> (tensors, skipped names).

    ``*_momentum`` blobs and entries that are not numeric arrays are skipped.
    """
    blobs = obj["blobs"] if isinstance(obj.get("blobs"), Mapping) else obj
    out: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    for name, value in blobs.items():
        name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        if name.endswith("_momentum"):
            skipped.append(name)
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            skipped.append(name)
            continue
        out[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
    return out, skipped


def is_caffe2_blobs(obj: Any) -> bool:
    """A Caffe2 weights pickle: a dict with a ``blobs`` dict, or a dict of numpy arrays."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("blobs"), Mapping):
        return True
    return bool(obj) and any(isinstance(v, np.ndarray) for v in obj.values()) and not any(
        isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class WeightsFile:
    """A weights file (or in-memory checkpoint) read into tensors: ``state_dict`` in the writer's own key names, ``skipped``
    entries (Caffe2 optimizer state / not arrays) and the plain ``meta`` data stored beside the
    weights (PySlowFast's ``cfg`` YAML text, mmengine's ``meta``, gcvideo's ``config``)."""
    source: str
    state_dict: Dict[str, torch.Tensor]
    skipped: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)


def read_weights_file(source: Union[str, Mapping]) -> WeightsFile:
    """A file path (read safely) or an in-memory checkpoint / state dict -> :class:`WeightsFile`."""
    name = source if isinstance(source, str) else "<state dict>"
    obj = load_weights_object(source) if isinstance(source, str) else source
    skipped: List[str] = []
    meta: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        meta = {k: v for k, v in obj.items() if k in ("cfg", "config", "meta") and not isinstance(v, torch.Tensor)}
    if is_caffe2_blobs(obj):
        obj, skipped = caffe2_blobs_to_tensors(obj)
    return WeightsFile(source=name, state_dict=unwrap_state_dict(obj, name), skipped=skipped, meta=meta)
