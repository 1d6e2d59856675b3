"""OUTPUT_DIR on an iopath location that cannot rename files or append to them (like S3)."""
import json
import os
import shutil

import pytest
import torch
from iopath.common.file_io import PathHandler

from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import train
from gcvideo.engine.run_checkpoints import list_checkpoints
from gcvideo.utils.io import atomic_save, load_checkpoint_file, path_manager


class _ObjectStore(PathHandler):
    """``objstore://`` backed by a local folder; like an object store: no rename, no append."""
    PREFIX = "objstore://"
    root = None
    uploads = []

    def _local(self, path):
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return self._local(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        if "a" in mode or "+" in mode:
            raise ValueError(f"Unsupported open mode {mode}")
        if "w" in mode:
            _ObjectStore.uploads.append(path)
            os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return open(self._local(path), mode)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(self._local(path))

    def _ls(self, path, **kwargs):
        return sorted(os.listdir(self._local(path)))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)

    def _rm(self, path, **kwargs):
        p = self._local(path)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    def _copy(self, src, dst, overwrite=False, **kwargs):
        shutil.copyfile(self._local(src), self._local(dst))
        return True


@pytest.fixture
def objstore(tmp_path):
    _ObjectStore.root = str(tmp_path / "bucket")
    os.makedirs(_ObjectStore.root)
    _ObjectStore.uploads = []
    if not any(isinstance(h, _ObjectStore) for h in path_manager._path_handlers.values()):
        path_manager.register_handler(_ObjectStore())
    return _ObjectStore


def test_atomic_save_without_rename(objstore):
    atomic_save({"w": torch.arange(3)}, "objstore://a/ck.pth")
    assert torch.equal(load_checkpoint_file("objstore://a/ck.pth")["w"], torch.arange(3))
    assert os.listdir(os.path.join(objstore.root, "a")) == ["ck.pth"]  # the temporary is gone


def test_training_run_writes_everything_to_the_store(objstore, tmp_path):
    out = "objstore://runs/r1"
    res = train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 2, "TRAIN.EVAL_PERIOD", 1, "TRAIN.TEST_AT_END", True),
                dataset_builder=builder())
    assert [os.path.basename(p) for p in list_checkpoints(out)][-1] == "checkpoint_epoch0002.pth"
    local = os.path.join(objstore.root, "runs", "r1")
    lines = [json.loads(ln) for ln in open(os.path.join(local, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [1, 2]
    assert os.path.exists(os.path.join(local, "curves.png")) and os.path.exists(os.path.join(local, "config.yaml"))
    assert res["test"] is not None and os.path.exists(os.path.join(res["test"]["report_dir"].replace(
        "objstore://", objstore.root + "/"), "report.txt"))
    # the same command resumes from the store
    res2 = train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 2, "TRAIN.EVAL_PERIOD", 1), dataset_builder=builder())
    assert res2["global_iter"] == res["global_iter"]


def test_later_writes_upload_once(objstore):
    atomic_save({"w": torch.zeros(1)}, "objstore://b/one.pth")  # learns that the store cannot rename
    objstore.uploads.clear()
    atomic_save({"w": torch.ones(1)}, "objstore://b/two.pth")
    assert objstore.uploads == ["objstore://b/two.pth"]  # no temporary object first
    assert torch.equal(load_checkpoint_file("objstore://b/two.pth")["w"], torch.ones(1))
