"""A training run's output folder: one run per folder (a lock), no foreign files, config history."""
from __future__ import annotations

import contextlib
from typing import Iterator

from gcvideo.engine import distributed as du
from gcvideo.engine.run_checkpoints import checkpoint_dir
from gcvideo.utils.folder_lock import FolderLock
from gcvideo.utils.io import atomic_write_text, path_join, path_manager, remove_temporaries

__all__ = ["claim_output_dir"]


@contextlib.contextmanager
def claim_output_dir(out: str, config_text: str) -> Iterator[None]:
    """Rank 0 locks ``out`` for the run, removes the temporary files of earlier runs and writes
    config.yaml; an error there is raised on every process."""
    lock = FolderLock(out, "OUTPUT_DIR")

    def claim() -> None:
        try:
            lock.acquire()
            if lock.note:
                print(lock.note, flush=True)
            _check_foreign_files(out)
            for folder in (out, checkpoint_dir(out)):
                remove_temporaries(folder)
            _write_config(out, config_text)
        except BaseException as e:
            lock.release(remove=isinstance(e, FileExistsError))  # leave a foreign folder as it was
            raise

    du.run_on_main_process(claim)
    try:
        yield
    finally:
        lock.release()


def _check_foreign_files(out: str) -> None:
    """Refuse a folder with files not written by gcvideo (no config.yaml)."""
    if path_manager.exists(out):
        entries = [e for e in path_manager.ls(out) if not e.startswith(".")]
        if entries and not path_manager.exists(path_join(out, "config.yaml")):
            raise FileExistsError(
                f"OUTPUT_DIR = {out!r} already holds files not written by gcvideo ({', '.join(sorted(entries)[:5])}"
                f"{', ...' if len(entries) > 5 else ''}); choose an empty or new folder so nothing is overwritten")


def _write_config(out: str, text: str) -> None:
    """``out``/config.yaml; an earlier run's different config is kept as config.N.yaml."""
    cfg_path = path_join(out, "config.yaml")
    path_manager.mkdirs(out)
    if path_manager.exists(cfg_path):
        with path_manager.open(cfg_path, "r") as f:
            old = f.read()
        if old != text:
            n = 1
            while path_manager.exists(path_join(out, f"config.{n}.yaml")):
                n += 1
            atomic_write_text(path_join(out, f"config.{n}.yaml"), old)
    atomic_write_text(cfg_path, text)
