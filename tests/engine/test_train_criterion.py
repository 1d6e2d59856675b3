"""The loop trains with the criterion and batch transform it is handed (gcvideo/engine/trainer.py)."""
import torch
import torch.nn.functional as F

from engine_synthetic import builder, tiny_cfg
from gcvideo.engine.optim import WarmupCosineSchedule
from gcvideo.engine.device_prep import DevicePrep
from gcvideo.engine.trainer import EpochPosition, StepNumerics, train_one_epoch
from gcvideo.layers.losses import CrossEntropy

K = 5
CPU = DevicePrep(torch.device("cpu"))


def _setup(lr=0.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, K))
    batches = [{"video": torch.randn(4, 3, 2, 4, 4), "label": torch.randint(0, K, (4,))} for _ in range(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = WarmupCosineSchedule(optimizer, lr=lr, max_epoch=1, warmup_epochs=0, warmup_start_factor=1.0,
                                    end_factor=1.0, iters_per_epoch=2)
    return model, batches, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False)


def test_the_loop_uses_the_criterion_it_is_given():
    """LR 0: the epoch's loss is the mean of the given criterion on the unchanged model's logits."""
    model, batches, optimizer, schedule, scaler = _setup()
    with torch.no_grad():
        want = [F.cross_entropy(model(b["video"]), b["label"], label_smoothing=0.3).item() for b in batches]
        plain = [F.cross_entropy(model(b["video"]), b["label"]).item() for b in batches]
    stats = train_one_epoch(model, CrossEntropy(K, 0.3), optimizer, schedule, batches, CPU, EpochPosition(0, 2),
                            StepNumerics(scaler))
    assert abs(stats["loss"] - sum(want) / 2) < 1e-6 and abs(stats["loss"] - sum(plain) / 2) > 1e-3
    # without a criterion: the plain cross-entropy, as before
    stats = train_one_epoch(model, None, optimizer, schedule, batches, CPU, EpochPosition(0, 2), StepNumerics(scaler))
    assert abs(stats["loss"] - sum(plain) / 2) < 1e-6


def test_the_loop_mixes_each_batch_with_the_draw_of_its_step():
    """A ClipMixup batch transform: iteration ``it`` of ``epoch`` trains on the clips and soft targets of
    that step's draw (LR 0: the epoch's loss is their mean), resumed epochs included (start_iter)."""
    from gcvideo.data.mixup import ClipMixup, mix_batch
    from gcvideo.layers.losses import SoftTargetCrossEntropy

    model, batches, optimizer, schedule, scaler = _setup()
    mixup, criterion = ClipMixup(K, label_smoothing=0.1, seed=3), SoftTargetCrossEntropy(K)
    with torch.no_grad():
        want = []
        for it, b in enumerate(batches):
            x, q = mix_batch(b["video"], b["label"], mixup.draw(4, 4, 1, it), K, 0.1)
            want.append(-(q * torch.log_softmax(model(x), 1)).sum(1).mean().item())
    stats = train_one_epoch(model, criterion, optimizer, schedule, batches, CPU, EpochPosition(1, 2),
                            StepNumerics(scaler), batch_transform=mixup)
    assert abs(stats["loss"] - sum(want) / 2) < 1e-6
    stats = train_one_epoch(model, criterion, optimizer, schedule, batches[1:], CPU, EpochPosition(1, 2, start_iter=1),
                            StepNumerics(scaler), batch_transform=mixup)
    assert abs(stats["loss"] - want[1]) < 1e-6


def test_a_run_mixes_its_training_steps_only(tmp_path, monkeypatch):
    """With MIXUP.ENABLE, train() hands each training step (epoch, iteration) to the mixup once; precise
    BN, validation and the final test see unmixed clips (their metrics count the true labels)."""
    import gcvideo.engine.trainer as trainer

    calls = []

    def counting(cfg, rank=0):
        mixup = real(cfg, rank)

        def transform(x, y, *, epoch, it):
            calls.append((epoch, it, x.shape[0]))
            return mixup(x, y, epoch=epoch, it=it)
        return transform

    real = trainer.build_mixup
    monkeypatch.setattr(trainer, "build_mixup", counting)
    cfg = tiny_cfg(tmp_path / "run", "MIXUP.ENABLE", True, "MODEL.LOSS", "soft_cross_entropy", "TRAIN.EVAL_PERIOD", 1,
                   "TRAIN.PRECISE_BN_BATCHES", 1, "TRAIN.TEST_AT_END", True)
    result = trainer.train(cfg, dataset_builder=builder())
    assert calls == [(e, i, 4) for e in range(2) for i in range(4)]  # 16 clips, batch 4, 2 epochs
    assert len(result["val"]) == 2 and result["test"] is not None
