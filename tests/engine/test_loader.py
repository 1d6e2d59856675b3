"""The engine's DataLoaders (gcvideo.engine.loader): the training loader built once with persistent
workers gives a fresh loader's items at any (epoch, start iteration), and every engine loader forks
its workers with a frozen garbage collector."""
import gc
import os

import pytest
import torch
from torch.utils.data import Dataset

from gcvideo.config import get_cfg, validate_cfg
from gcvideo.data import build_dataset
from gcvideo.data.dataset import collate_train
from gcvideo.engine.distributed import TrainSampler
from gcvideo.engine.loader import ForkingLoader, LoaderSettings, TrainLoader
from gcvideo.engine.tester import build_eval_loader


@pytest.fixture(scope="module")
def toy_train_set(tmp_path_factory):
    """16 toy training videos (48 px, 24 frames) as gcvideo's VideoDataset, time reversal on."""
    from gcvideo.data.toy import make_toy_dataset

    out = str(tmp_path_factory.mktemp("toy"))
    make_toy_dataset(out, seed=5, num_train=16, num_val=2, size=48, num_frames=24, workers=1)
    cfg = get_cfg()
    cfg.MODEL.NUM_CLASSES = 8
    d = cfg.DATA
    d.PATH_TO_DATA_DIR, d.LABEL_MAP = out, f"{out}/classes.txt"
    d.NUM_FRAMES, d.SAMPLING_RATE, d.REVERSE_PROB = 4, 4, 0.5
    d.TRAIN_JITTER_SCALES, d.TRAIN_CROP_SIZE, d.TEST_CROP_SIZE = [48, 60], 40, 48
    validate_cfg(cfg)
    return build_dataset(cfg, "train")


def _batches(loader):
    return [(b["index"].tolist(), b["video"].clone(), b["label"].clone()) for b in loader]


def _loader(ds, workers):
    return TrainLoader(ds, TrainSampler(len(ds), 4, 0, 1, seed=3), 4, LoaderSettings(workers, False, 2),
                       seed=3, rank=0, collate_fn=collate_train)


def _assert_same(got, want):
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, video, label), (_, v, lab) in zip(got, want):
        assert torch.equal(label, lab)
        assert torch.equal(video, v)


def test_persistent_loader_gives_a_fresh_loaders_items_at_epoch_2_and_mid_epoch(toy_train_set):
    ds = toy_train_set
    persistent = _loader(ds, 2)
    assert persistent.persistent
    first = persistent.epoch(0)
    assert len(_batches(first)) == 4  # epoch 0, whole
    it = iter(persistent.epoch(1))  # epoch 1: two batches, then left (as precise BN leaves it)
    next(it), next(it)
    got = _batches(persistent.epoch(2))
    got_mid = _batches(persistent.epoch(2, start_iter=2))
    assert persistent.epoch(3) is first  # one DataLoader, the same workers, all along
    persistent.close()
    # a fresh loader, in this process, at epoch 2 (and 1)
    fresh = _loader(ds, 0)
    want = _batches(fresh.epoch(2))
    want_mid = _batches(fresh.epoch(2, start_iter=2))
    epoch1 = _batches(fresh.epoch(1))
    assert len(want) == 4 and len(want_mid) == 2
    _assert_same(got, want)
    _assert_same(got_mid, want_mid)
    _assert_same(want_mid, want[2:])
    # the test can fail: epoch 1 draws other clips of the same videos
    clips1 = {i: v for idx, video, _ in epoch1 for i, v in zip(idx, video)}
    assert sum(not torch.equal(v, clips1[i]) for idx, video, _ in want for i, v in zip(idx, video)) >= 12


class _EpochInWorker(Dataset):
    """Items are the epoch the worker sees; ``set_epoch`` changes this process's copy only."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return self.epoch


def test_dataset_whose_epoch_stays_in_the_parent_gets_new_workers_each_epoch():
    loader = TrainLoader(_EpochInWorker(), TrainSampler(8, 4, 0, 1, seed=0), 4, LoaderSettings(2, False, 2),
                         seed=0, rank=0)
    for epoch in (0, 1, 2):
        assert [int(x) for b in loader.epoch(epoch) for x in b] == [epoch] * 8
    assert not loader.persistent


class _FreezeCount(Dataset):
    """Items are ``gc.get_freeze_count()`` in the process that makes them."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return gc.get_freeze_count()


def test_engine_loaders_fork_workers_with_a_frozen_gc():
    """Objects alive at the fork are frozen in the workers (their collections leave those pages
    shared: bench/results/records.md); the parent's collector is as before."""
    assert gc.get_freeze_count() == 0
    ds = _FreezeCount()
    train = TrainLoader(ds, TrainSampler(4, 2, 0, 1, seed=0), 2, LoaderSettings(2, False, 2), seed=0, rank=0)
    loaders = {"ForkingLoader": ForkingLoader(ds, batch_size=2, num_workers=2),
               "TrainLoader": train.epoch(0), "build_eval_loader": build_eval_loader(ds, 2, 2, False)}
    for name, loader in loaders.items():
        counts = [int(x) for b in loader for x in b]
        assert len(counts) == 4 and min(counts) > 1000, (name, counts)  # torch, numpy, ... frozen there
        assert gc.get_freeze_count() == 0, name  # unfrozen here after the fork
    train.close()
    # no workers: nothing is frozen anywhere
    assert [int(x) for b in ForkingLoader(ds, batch_size=2) for x in b] == [0] * 4


class _Index(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return index


def test_engine_loaders_size_their_workers_to_the_cores(monkeypatch, capsys):
    """DATA.NUM_WORKERS 4 on a machine that shows 2 usable cores (the affinity torch and gcvideo
    read): test and training loaders run 2 workers, give every item, and PyTorch's warning that
    4 workers exceed the suggested maximum does not come; one note says what was done."""
    import os
    import warnings

    from gcvideo.engine import loader as loader_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loader_module, "_NOTED", set())
    train = TrainLoader(_Index(), TrainSampler(8, 4, 0, 1, seed=0), 4, LoaderSettings(4, False, 2), seed=0, rank=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test_loader = build_eval_loader(_Index(), 4, 4, False)
        train_loader = train.epoch(0)
        assert sorted(int(x) for b in test_loader for x in b) == list(range(8))
        assert sorted(int(x) for b in train_loader for x in b) == list(range(8))
    train.close()
    assert (test_loader.num_workers, train_loader.num_workers) == (2, 2)
    assert not [str(w.message) for w in caught if "worker" in str(w.message)]
    out = capsys.readouterr().out
    assert out.count("note: DATA.NUM_WORKERS 4 is more than this process's share of the 2 usable cores: "
                     "2 loader workers") == 1


def test_gc_freeze_only_around_a_loaders_own_forks():
    """ForkingLoader freezes through the public fork hook (os.register_at_fork), only while its own
    iterator forks: another fork sees the collector as it is, and a collector the application froze
    itself stays frozen."""
    assert "_get_iterator" not in vars(ForkingLoader)  # no private DataLoader method overridden
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fork that is not a loader's
        os.write(w, str(gc.get_freeze_count()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 64) == b"0"
    os.close(r), os.close(w)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        counts = [int(x) for b in ForkingLoader(_FreezeCount(), batch_size=2, num_workers=2) for x in b]
        assert min(counts) >= frozen and gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


def test_close_ends_the_persistent_workers():
    train = TrainLoader(_WorkerPid(), TrainSampler(8, 4, 0, 1, seed=0), 4, LoaderSettings(2, False, 2), seed=0, rank=0)
    loader = train.epoch(0)  # held here, as a caller may: close still ends the workers
    pids = {int(p) for b in loader for p in b}
    assert len(pids) == 2 and os.getpid() not in pids
    train.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    train.close()  # twice: nothing left to end


class _WorkerPid(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return os.getpid()


def test_train_loader_takes_its_workers_pinning_and_prefetch_from_loader_settings():
    settings = LoaderSettings(num_workers=2, pin_memory=True, prefetch_factor=3)
    assert settings.for_device(torch.device("cpu")) == LoaderSettings(2, False, 3)  # pinned memory on CUDA only
    assert settings.for_device(torch.device("cuda")) == settings
    loader = TrainLoader(_EpochInWorker(), TrainSampler(8, 4, 0, 1, seed=0), 4, LoaderSettings(2, False, 3),
                         seed=0, rank=0).epoch(0)
    assert (loader.num_workers, loader.pin_memory, loader.prefetch_factor) == (2, False, 3)
    loader = TrainLoader(_EpochInWorker(), TrainSampler(8, 4, 0, 1, seed=0), 4, LoaderSettings(0, False, 3),
                         seed=0, rank=0).epoch(0)
    assert (loader.num_workers, loader.prefetch_factor) == (0, None)  # no workers: no prefetch


def test_loader_settings_stay_importable_from_the_tester():
    from gcvideo.engine.tester import LoaderSettings as FromTester
    assert FromTester is LoaderSettings
