"""Checkpoints are verified before they are trusted: 8 bytes flipped inside a tensor record's data
(not the zip headers) load silently with ``torch.load(weights_only=True)``; gcvideo checks every
record's CRC-32, sets a damaged training checkpoint aside and resumes from the one before, skips it
when testing OUTPUT_DIR, and says one error line for a file the user named."""
import hashlib
import os
import struct
import sys
import zipfile

import pytest
import torch

from engine_helpers import assert_same_state
from engine_synthetic import builder, tiny_cfg
import gcvideo.engine as engine
from gcvideo.engine import NonFiniteLossError, train
from gcvideo.engine.run_checkpoints import list_checkpoints
from gcvideo.models import CheckpointMismatchError, InflationError, build_model
from gcvideo.utils.io import CorruptCheckpointError, load_checkpoint_file, move_aside

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def flip_tensor_bytes(path, key="blocks.0.conv.weight"):
    """Flip 8 bytes in the middle of the data record of tensor ``key`` (of the state dict, or of the
    ``model`` dict of a training checkpoint); returns the record's name. The offset comes from the
    zip's own directory: the local header at ``header_offset`` is 30 bytes + name + extra field."""
    state = torch.load(path, weights_only=True)
    sd = state["model"] if "model" in state else state
    target = sd[key]
    with zipfile.ZipFile(path) as z:
        # the record of ``key``: the one whose bytes are the tensor's bytes
        want = target.contiguous().numpy().tobytes()
        info = next(i for i in z.infolist() if "/data/" in i.filename and z.read(i.filename) == want)
    raw = bytearray(open(path, "rb").read())
    h = info.header_offset
    assert raw[h:h + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", raw[h + 26:h + 30])
    start = h + 30 + name_len + extra_len + info.file_size // 2 // 8 * 8
    raw[start:start + 8] = bytes(b ^ 0x5A for b in raw[start:start + 8])
    open(path, "wb").write(bytes(raw))
    # the premise: torch loads the damaged file silently, with other numbers in that tensor
    damaged = torch.load(path, weights_only=True)
    damaged = damaged["model"] if "model" in damaged else damaged
    assert not torch.equal(damaged[key], target)
    return info.filename


def test_a_flipped_tensor_record_is_named(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save(build_model(tiny_cfg(tmp_path / "x")).state_dict(), path)
    load_checkpoint_file(path)  # intact: loads
    record = flip_tensor_bytes(path)
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {path} is corrupt: record {record} does not "
                                                     "match its CRC-32"):
        load_checkpoint_file(path)


def test_a_file_set_aside_never_replaces_one_set_aside_before(tmp_path):
    path = tmp_path / "checkpoint_epoch0002.pth"
    for n, expected in ((1, ".corrupt"), (2, ".corrupt.1"), (3, ".corrupt.2")):
        path.write_bytes(b"damaged %d" % n)
        assert move_aside(str(path)) == str(path) + expected
    assert not path.exists()
    assert [(tmp_path / (path.name + s)).read_bytes() for s in (".corrupt", ".corrupt.1", ".corrupt.2")] == [
        b"damaged 1", b"damaged 2", b"damaged 3"]


def test_legacy_torch_files_have_no_crc_and_still_load(tmp_path):
    """torch < 1.6 files (no zip, no checksums) are read as before."""
    path = str(tmp_path / "legacy.pth")
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(path)["w"], torch.arange(4.0))


def test_resume_sets_a_corrupt_checkpoint_aside_and_falls_back(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 2, "TRAIN.KEEP_LAST", 3)
    train(cfg, dataset_builder=builder())
    ck1, ck2 = list_checkpoints(str(out))
    assert os.path.basename(ck2) == "checkpoint_epoch0002.pth"
    good_epoch2 = load_checkpoint_file(ck2)
    flip_tensor_bytes(ck2)
    damaged_sha = _sha(ck2)
    capsys.readouterr()
    # the same command again: epoch 2's checkpoint is damaged, so it resumes after epoch 1
    train(cfg, dataset_builder=builder())
    printed = capsys.readouterr().out
    assert f"warning: skipping damaged checkpoint {ck2}: checkpoint {ck2} is corrupt: record " in printed, printed
    assert f"renamed it to {ck2}.corrupt" in printed
    assert f"resuming from {ck1}: epoch 2, iteration 0" in printed
    # kept, byte for byte, out of the way; never listed again
    assert _sha(ck2 + ".corrupt") == damaged_sha
    assert list_checkpoints(str(out)) == [ck1, ck2]
    # epoch 2 trained again from epoch 1's checkpoint: the weights the damaged file held before the flip
    assert_same_state(load_checkpoint_file(ck2)["model"], good_epoch2["model"])
    # a rerun resumes from the new epoch 2 without another warning: no loop on the damaged file
    train(cfg, dataset_builder=builder())
    printed = capsys.readouterr().out
    # (the run is complete at epoch 2: the rerun says so from the new epoch-2 checkpoint)
    assert "damaged" not in printed and f"run finished at epoch 2: {ck2}" in printed, printed


def test_test_skips_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    (out / "checkpoints").mkdir(parents=True)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        torch.save(build_model(cfg).state_dict(), out / "checkpoints" / f"checkpoint_epoch000{epoch}.pth")
    newest = str(out / "checkpoints" / "checkpoint_epoch0002.pth")
    record = flip_tensor_bytes(newest)
    res = engine.test(cfg, dataset_builder=builder())
    assert res["report_dir"].endswith("test_checkpoint_epoch0001_2x1")
    assert f"warning: skipping unreadable checkpoint {newest}: checkpoint {newest} is corrupt: record {record} " \
        in capsys.readouterr().out


def test_test_stops_at_a_newest_checkpoint_that_reads_but_does_not_fit(tmp_path, capsys):
    """Only an unreadable newest checkpoint is skipped: one that reads but holds another model (here
    another class count) is the user's error, not a reason to test an older checkpoint."""
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    (out / "checkpoints").mkdir(parents=True)
    torch.save(build_model(cfg).state_dict(), out / "checkpoints" / "checkpoint_epoch0001.pth")
    newest = out / "checkpoints" / "checkpoint_epoch0002.pth"
    torch.save(build_model(tiny_cfg(out, num_classes=7)).state_dict(), newest)
    with pytest.raises(CheckpointMismatchError, match=rf"{newest}.*class count") as e:
        engine.test(cfg, dataset_builder=builder())
    assert not isinstance(e.value, InflationError)  # it reads, it is no 2D inflation
    assert "skipping" not in capsys.readouterr().out
    assert not (out / "test_checkpoint_epoch0001_2x1").exists()


def _tool(name):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    return __import__(name)


def test_a_corrupt_checkpoint_or_init_from_file_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    path = str(tmp_path / "given.pth")
    torch.save(build_model(cfg).state_dict(), path)
    record = flip_tensor_bytes(path)
    expected = f"error: checkpoint {path} is corrupt: record {record} does not match its CRC-32"
    y = tmp_path / "c.yaml"
    y.write_text(f"OUTPUT_DIR: {out}\nDATA:\n  PATH_TO_DATA_DIR: {tmp_path}\n")
    # test_net --checkpoint FILE: no fallback for a file the user named
    assert _tool("test_net").main(["--config", str(y), "--checkpoint", path, "MODEL.WIDTH", "8",
                                   "MODEL.STAGE_DEPTHS", "[1, 1, 1, 1]", "MODEL.NUM_CLASSES", "4"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    # train_net --init-from FILE: refused before anything is written
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 1\n")
    assert _tool("train_net").main(["--config", str(y), "--init-from", path, "TRAIN.BATCH_SIZE", "1",
                                    "TRAIN.TEST_AT_END", "False", "TRAIN.EVAL_PERIOD", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not out.exists()


def test_a_nan_stop_names_the_checkpoint_a_rerun_resumes_from(tmp_path, capsys):
    out = tmp_path / "run"
    ck1, ck2 = (str(out / "checkpoints" / f"checkpoint_epoch000{e}.pth") for e in (1, 2))
    nan_at_epoch_3 = builder(train={"nan_epoch": 2})  # every clip of epoch 3 is NaN

    def build(cfg, split):
        ds = nan_at_epoch_3(cfg, split)
        if split == "train":  # epoch 2's checkpoint is damaged on disk while epoch 3 starts
            set_epoch = ds.set_epoch
            ds.set_epoch = lambda e: (set_epoch(e), e == 2 and not os.path.exists(ck2 + ".corrupt")
                                      and flip_tensor_bytes(ck2))
        return ds

    with pytest.raises(NonFiniteLossError, match=r"epoch 3, iteration 1 of 4 .*running the same command again "
                                                 f"resumes from {ck1} \\(epoch 2, iteration 0\\)"):
        train(tiny_cfg(out, "SOLVER.MAX_EPOCH", 3, "TRAIN.KEEP_LAST", 3), dataset_builder=build)
    assert f"warning: skipping damaged checkpoint {ck2}" in capsys.readouterr().out
    assert os.path.exists(ck2 + ".corrupt") and list_checkpoints(str(out)) == [ck1]
