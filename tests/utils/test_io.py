"""Atomic writes: a failed write (full disk) leaves the old file and no temporary; file:// is local."""
import errno
import os

import pytest

import gcvideo.utils.io as gio
from gcvideo.utils.io import WriteError, atomic_write_text, path_manager, refuse_existing, remove_temporaries


def test_full_disk_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old\n")
    real_open = open

    def full_open(path, mode="r", *a, **k):  # half the data reaches the disk, then ENOSPC
        f = real_open(path, mode, *a, **k)
        if "w" in mode:
            write = f.write
            f.write = lambda data: (write(data[: len(data) // 2]), f.flush(),
                                    (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        return f

    monkeypatch.setattr(gio, "open", full_open, raising=False)
    with pytest.raises(WriteError) as e:
        atomic_write_text(str(target), "x" * 3000)
    assert str(e.value).startswith(f"cannot write {target}: no space left on device (it needs 3.0 KB, ")
    assert "\n" not in str(e.value) and e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["config.yaml"] and target.read_text() == "old\n"


def test_file_uri_is_the_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "file://" + str(tmp_path / "a" / "b.txt")
    atomic_write_text(uri, "hi")
    assert (tmp_path / "a" / "b.txt").read_text() == "hi" and not (tmp_path / "file:").exists()
    assert path_manager.exists(uri) and path_manager.ls("file://" + str(tmp_path / "a")) == ["b.txt"]
    path_manager.mkdirs("file://" + str(tmp_path / "c"))
    assert (tmp_path / "c").is_dir() and not (tmp_path / "file:").exists()


def test_remove_temporaries_only_removes_write_leftovers(tmp_path):
    for name in ("config.yaml", "config.yaml.tmp-12-0123abcd", "ck.pth.tmp-7-89abcdef", "notes.tmp-x"):
        (tmp_path / name).write_text("")
    removed = remove_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == ["ck.pth.tmp-7-89abcdef", "config.yaml.tmp-12-0123abcd"]
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "notes.tmp-x"]


def test_refuse_existing_names_exactly_the_files_that_exist(tmp_path):
    a, b, c = (str(tmp_path / n) for n in ("a.png", "b.gif", "c.pt"))
    open(a, "w").close()
    open(c, "w").close()
    refuse_existing(str(tmp_path / "new.pth"), overwrite=False)  # nothing there: no error
    with pytest.raises(FileExistsError) as e:
        refuse_existing(a, overwrite=False)
    assert str(e.value) == f"{a} already exists; refusing to overwrite it (pass --overwrite)"
    with pytest.raises(FileExistsError) as e:
        refuse_existing([a, b, c], overwrite=False)
    assert str(e.value) == f"{a}, {c} already exist; refusing to overwrite them (pass --overwrite)"
    refuse_existing([a, b, c], overwrite=True)


@pytest.mark.parametrize("kind", ["TorchScript", "torch.export", "ONNX"])
def test_an_exported_model_is_named_as_such_not_as_unsafe_pickle(kind, tmp_path):
    """--init-from / --checkpoint with a file tools/export.py writes: 'an exported ... model', not
    'needs arbitrary unpickling' (TorchScript) or 'not a readable pickle' (ONNX)."""
    import warnings

    import torch

    from gcvideo.config import get_cfg
    from gcvideo.models import build_model, load_pretrained
    from gcvideo.utils.io import CheckpointError, exported_model_kind, load_checkpoint_file

    m = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 4 * 4, 2)).eval()
    x = torch.randn(1, 3, 2, 4, 4)
    path = str(tmp_path / "model.exported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "TorchScript":
            torch.jit.save(torch.jit.trace(m, x), path)
        elif kind == "torch.export":
            torch.export.save(torch.export.export(m, (x,)), path)
        else:
            pytest.importorskip("onnx")
            torch.onnx.export(m, (x,), path, dynamo=False)
    data = open(path, "rb").read()
    assert exported_model_kind(data) == kind
    torch.save(m.state_dict(), str(tmp_path / "plain.pth"))  # a checkpoint is not an exported model
    assert exported_model_kind(open(tmp_path / "plain.pth", "rb").read()) == ""
    assert exported_model_kind(b"\x80\x02}q\x00.") == ""  # a plain pickle
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS = 8, [1, 1, 1, 1]
    for load in (load_checkpoint_file, lambda p: load_pretrained(build_model(cfg), p)):  # TRAIN.INIT_FROM's loader
        with pytest.raises(CheckpointError) as e:
            load(path)
        msg = str(e.value)
        assert msg.startswith(f"{path} is an exported {kind} model, not a checkpoint") and "unpickling" not in msg
