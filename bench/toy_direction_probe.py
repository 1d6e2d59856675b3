#!/usr/bin/env python
"""Where a trained toy model tells rotating_cw from rotating_ccw: a linear probe on each stage.

    python bench/toy_direction_probe.py RUN_DIR [RUN_DIR ...]

RUN_DIR: a toy training run (its ``config.yaml`` and newest checkpoint). For every
rotating video, training clips are drawn as in training (crop, flip and reversal, labels mapped);
each stage's output (stem, res2 ... res5) is average-pooled to 1x4x4 (res5: to one vector), and an
L2-regularised logistic regression is fitted on the training videos' clips and scored on clips of
the validation videos (two draws each). Prints, per stage, accuracy on train / held-out clips:
0.5 is chance. A model that learnt the direction shows it from some stage on; one that waited on
the cw/ccw saddle shows it nowhere.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.data.annotations import read_label_map  # noqa: E402
from gcvideo.data.dataset import build_dataset  # noqa: E402
from gcvideo.data.toy import TOY_CLASSES  # noqa: E402
from gcvideo.data.transforms import normalize_views  # noqa: E402
from gcvideo.engine.tester import checkpoints_to_test  # noqa: E402
from gcvideo.models import build_model  # noqa: E402
from gcvideo.models.pretrained import load_pretrained  # noqa: E402

CW, CCW = TOY_CLASSES.index("rotating_cw"), TOY_CLASSES.index("rotating_ccw")
STAGES = ["stem", "res2", "res3", "res4", "res5"]


def check_toy_classes(label_map: str) -> None:
    """The run's classes must be the toy's where the probe reads them: rotating_cw / rotating_ccw."""
    names = read_label_map(label_map) if label_map else []
    if names[CW:CCW + 1] != ["rotating_cw", "rotating_ccw"]:
        raise ValueError(f"DATA.LABEL_MAP = {label_map!r}: classes {CW} and {CCW} are {names[CW:CCW + 1]}, "
                         "expected ['rotating_cw', 'rotating_ccw'] (a toy run's label map)")


def stage_features(model, cfg, annotation_file: str, draws: int):
    """{stage: (N, D)} features and (N,) labels (1 = cw) of training-style clips of the rotating videos."""
    check_toy_classes(cfg.DATA.LABEL_MAP)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATA.TRAIN_FILE = annotation_file  # training-style clips of these videos
    ds = build_dataset(cfg, "train")
    out = {}
    hooks = [model.blocks[i].register_forward_hook(lambda m, x, y, i=i: out.__setitem__(i, y))
             for i in range(len(STAGES))]
    feats, labels = {i: [] for i in range(len(STAGES))}, []
    for _ in range(draws):
        for j, rec in enumerate(ds.records):
            if rec.label not in (CW, CCW):
                continue
            item = ds[j]
            video = item["video"] if item["video"].dim() == 5 else item["video"][None]  # (K, 3, T, H, W)
            with torch.no_grad():
                model(normalize_views(video, cfg.DATA.MEAN, cfg.DATA.STD))
            for i, y in out.items():  # y: (K, C, T, H, W)
                pooled = F.adaptive_avg_pool3d(y, (1, 4, 4)) if i < len(STAGES) - 1 else y.mean((2, 3, 4), keepdim=True)
                feats[i].append(pooled.flatten(1))
            labels.append((torch.as_tensor(item["label"]).reshape(-1) == CW).float())
    for h in hooks:
        h.remove()
    if not labels:
        raise ValueError(f"{annotation_file}: no rotating_cw / rotating_ccw videos to probe")
    return {i: torch.cat(f) for i, f in feats.items()}, torch.cat(labels)


def probe(x_train, y_train, x_test, y_test, l2: float = 1e-2):
    """Accuracy (train, held-out) of a logistic regression on standardised features."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(x_train.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x_train @ w + b, y_train) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return [((x @ w + b > 0).float() == y).float().mean().item() for x, y in ((x_train, y_train), (x_test, y_test))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    for run in args.runs:
        cfg = load_cfg(os.path.join(run, "config.yaml"), [], check_files=False)
        model = build_model(cfg).eval()
        load_pretrained(model, checkpoints_to_test("", run)[0], purpose="inference")  # the newest, or an error
        x_train, y_train = stage_features(model, cfg, cfg.DATA.TRAIN_FILE, draws=1)
        x_test, y_test = stage_features(model, cfg, cfg.DATA.VAL_FILE, draws=2)
        scores = [probe(x_train[i], y_train, x_test[i], y_test) for i in range(len(STAGES))]
        print(f"{run}: {len(y_train)} / {len(y_test)} clips; cw vs ccw, train / held-out: "
              + "  ".join(f"{s} {a:.2f} / {b:.2f}" for s, (a, b) in zip(STAGES, scores)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
