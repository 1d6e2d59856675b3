"""View aggregation and accuracy metrics against hand-computed numbers."""
import json
import math

import pytest
import torch

from gcvideo.engine.metrics import EvalResult, combine_views, compute_metrics, write_report


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_combine_views_hand_values():
    views = [[10.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]]  # one video, 3 views, 3 classes
    logits = torch.tensor([views])  # (1, 3, 3)
    p = [_softmax(v) for v in views]
    prob_mean = [sum(p[v][c] for v in range(3)) / 3 for c in range(3)]
    prob_max = [max(p[v][c] for v in range(3)) for c in range(3)]
    logit_mean = [sum(views[v][c] for v in range(3)) / 3 for c in range(3)]
    torch.testing.assert_close(combine_views(logits, "prob_mean")[0], torch.tensor(prob_mean))
    torch.testing.assert_close(combine_views(logits, "prob_max")[0], torch.tensor(prob_max))
    torch.testing.assert_close(combine_views(logits, "logit_mean")[0], torch.tensor(logit_mean))
    # the three methods disagree here: probabilities vote for class 1, logits/max for class 0
    assert combine_views(logits, "prob_mean").argmax().item() == 1
    assert combine_views(logits, "logit_mean").argmax().item() == 0
    assert combine_views(logits, "prob_max").argmax().item() == 0
    assert prob_mean[1] == pytest.approx((2 * math.exp(2) / (math.exp(2) + 2) + 1 / (math.exp(10) + 2)) / 3)
    with pytest.raises(ValueError, match="ENSEMBLE_METHOD"):
        combine_views(logits, "vote")


def _scores_for(ranks):
    """(N, 6) scores whose per-row descending order is the given class list."""
    s = torch.zeros(len(ranks), 6)
    for i, order in enumerate(ranks):
        for r, c in enumerate(order):
            s[i, c] = 6 - r
    return s


def test_topk_per_class_and_failed_videos():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    ok = torch.tensor([True, True, True, True, False, True])
    scores = _scores_for([
        [0, 1, 2, 3, 4, 5],  # correct
        [0, 1, 2, 3, 4, 5],  # label 1: wrong at top-1, within top-5
        [1, 0, 2, 3, 4, 5],  # correct
        [2, 0, 1, 3, 4, 5],  # correct
        [2, 0, 1, 3, 4, 5],  # failed (its scores must be ignored)
        [0, 1, 3, 4, 5, 2],  # label 2 ranked 6th: wrong at top-1 and top-5
    ])
    m = compute_metrics(scores, labels, ok, num_classes=6)
    a, d = m["all"], m["decodable"]
    assert a["videos"] == 6 and a["failed"] == 1 and d["videos"] == 5
    assert a["top1"] == pytest.approx(100 * 3 / 6) and a["top5"] == pytest.approx(100 * 4 / 6)
    assert a["mean_class_acc"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)
    assert d["top1"] == pytest.approx(100 * 3 / 5) and d["top5"] == pytest.approx(100 * 4 / 5)
    assert d["mean_class_acc"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 2) / 3)
    # unknown labels (-1) are left out of accuracy
    m2 = compute_metrics(scores, torch.tensor([0, 1, 1, 2, 2, -1]), ok, num_classes=6)
    assert m2["all"]["videos"] == 5 and m2["all"]["top1"] == pytest.approx(60.0)


def test_accuracy_with_failed_and_unlabelled_videos():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 1, 2, -1])
    ok = torch.tensor([True, True, True, False, True])
    m = compute_metrics(scores, labels, ok, num_classes=3, topk=2)
    a, d = m["all"], m["decodable"]
    # labelled: rows 0-3; row 3 failed (its perfect score is ignored); top-1 right: rows 0, 1
    assert a["top1"] == pytest.approx(50.0) and d["top1"] == pytest.approx(200 / 3)
    # top-2 right: rows 0, 1, 2
    assert a["top2"] == pytest.approx(75.0) and d["top2"] == pytest.approx(100.0)
    assert (len(labels), a["failed"], a["unlabeled"]) == (5, 1, 1)


def test_report_files(tmp_path):
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.0, 0.0, 0.0]])
    labels, ok = torch.tensor([0, 1, 2]), torch.tensor([True, True, False])
    m = compute_metrics(scores, labels, ok, 3)
    res = EvalResult(indices=[0, 1, 2], scores=scores, labels=labels, ok=ok, paths=["a.mp4", "b.mp4", "c.mp4"],
                     errors=["", "", "moov atom not found"], metrics=m)
    files = write_report(str(tmp_path), res, ["run", "jump", "swim"], "1x1 views")
    pred = (tmp_path / "predictions.csv").read_text().splitlines()
    assert pred[0] == "index,path,label,ok,pred1,score1,pred2,score2,pred3,score3"
    assert pred[1] == "0,a.mp4,run,1,run,0.70000,jump,0.20000,swim,0.10000"
    assert pred[2].startswith("1,b.mp4,jump,1,swim,0.60000")
    assert pred[3] == "2,c.mp4,swim,0"
    assert (tmp_path / "failed_videos.txt").read_text() == "c.mp4\tmoov atom not found\n"
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1 33.33%" in (tmp_path / "report.txt").read_text()
    assert set(files) == {"predictions", "failed", "confusion", "json", "text"}


def test_report_of_an_eval_result_hand_computed(tmp_path):
    """``write_report(out_dir, result, class_names, views, extra)`` writes the result's own rows: indices
    out of order as given, an unlabelled video, a failed one; report.json holds the metrics, the failed
    count and ``extra``; the summary's numbers are the hand-computed ones."""
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.0, 0.0], [0.3, 0.7]])
    labels, ok = torch.tensor([1, 1, 0, -1]), torch.tensor([True, True, False, True])
    res = EvalResult(indices=[4, 7, 9, 12], scores=scores, labels=labels, ok=ok,
                     paths=["p.mp4", "q.mp4", "r.mp4", "s.mp4"], errors=["", "", "no frames", ""],
                     metrics=compute_metrics(scores, labels, ok, 2))
    write_report(str(tmp_path), res, ["sit", "stand"], "2x3 views", extra={"checkpoint": "ck7"})
    pred = (tmp_path / "predictions.csv").read_text().splitlines()
    assert pred[1:] == ["4,p.mp4,stand,1,stand,0.90000,sit,0.10000", "7,q.mp4,stand,1,sit,0.80000,stand,0.20000",
                        "9,r.mp4,sit,0", "12,s.mp4,,1,stand,0.70000,sit,0.30000"]
    assert (tmp_path / "failed_videos.txt").read_text() == "r.mp4\tno frames\n"
    report = json.loads((tmp_path / "report.json").read_text())
    # labelled: p (right), q (wrong), r (failed: wrong) -> 1/3; decodable: 1/2; per class: sit 0/1, stand 1/2
    assert report["metrics"]["all"]["top1"] == pytest.approx(100 / 3)
    assert report["metrics"]["decodable"]["top1"] == pytest.approx(50.0)
    assert report["metrics"]["all"]["mean_class_acc"] == pytest.approx(25.0)
    assert (report["views"], report["num_failed"], report["checkpoint"]) == ("2x3 views", 1, "ck7")
    text = (tmp_path / "report.txt").read_text()
    assert text.startswith("2x3 views: top-1 33.33%  top-5 66.67%  mean class accuracy 25.00%  over 3 videos")
    assert text.endswith("failed: r.mp4\tno frames\n")


def test_eval_result_refuses_fields_of_other_lengths():
    """An EvalResult whose per-video fields disagree in length is refused, naming the sizes."""
    ok = dict(indices=[0, 1], scores=torch.zeros(2, 3), labels=torch.tensor([0, 1]),
              ok=torch.tensor([True, True]), paths=["a", "b"], errors=["", ""])
    EvalResult(**ok)
    with pytest.raises(ValueError, match=r"EvalResult of 2 videos \(indices\) has scores of shape \(2, 3\), "
                                         r"labels 2, ok 2, paths 1, errors 2"):
        EvalResult(**dict(ok, paths=["a"]))
    with pytest.raises(ValueError, match=r"scores of shape \(2,\)"):
        EvalResult(**dict(ok, scores=torch.zeros(2)))


def test_class_names_use_the_one_label_map_reader(tmp_path):
    """The report's class names come from ``read_label_map`` (one set of rules for annotations
    and reports): trailing blank lines are fine, a blank line inside or a repeated name is an error."""
    from gcvideo.data.annotations import AnnotationError
    from gcvideo.engine.tester import class_names

    assert class_names("", 3) == ["0", "1", "2"]
    good = tmp_path / "good.txt"
    good.write_text("run\njump\nswim\n\n")
    assert class_names(str(good), 3) == ["run", "jump", "swim"]
    with pytest.raises(ValueError, match=r"lists 3 classes but MODEL\.NUM_CLASSES = 4"):
        class_names(str(good), 4)
    (tmp_path / "gap.txt").write_text("run\n\njump\n")
    with pytest.raises(AnnotationError, match=r"gap\.txt:2: empty line inside the label map"):
        class_names(str(tmp_path / "gap.txt"), 2)
    (tmp_path / "twice.txt").write_text("run\nRun\n")
    with pytest.raises(AnnotationError, match=r"twice\.txt:2: class 'Run' repeats line 1"):
        class_names(str(tmp_path / "twice.txt"), 2)


def _hand_made_results():
    """13 labelled videos of classes a, c, d, f (of a..f) and one unlabelled; top-1 predictions:
    a: 4/4 right; c: 1 right, 3 -> d; d: 1 right, 1 -> c, 1 failed to decode; f: 2 -> a."""
    names = ["a", "b", "c", "d", "e", "f"]
    rows = [(0, 0, True)] * 4 + [(2, 2, True)] + [(2, 3, True)] * 3 + [(3, 3, True), (3, 2, True), (3, 0, False)] \
        + [(5, 0, True)] * 2 + [(-1, 1, True)]  # (label, top-1 prediction, ok)
    labels = torch.tensor([r[0] for r in rows])
    scores = torch.zeros(len(rows), 6)
    scores[torch.arange(len(rows)), torch.tensor([r[1] for r in rows])] = 1.0
    scores[~torch.tensor([r[2] for r in rows])] = 0.0  # a failed video has no scores
    return names, scores, labels, torch.tensor([r[2] for r in rows])


def test_report_lists_per_class_accuracy_worst_first_and_the_most_confused_pairs(tmp_path):
    names, scores, labels, ok = _hand_made_results()
    m = compute_metrics(scores, labels, ok, 6)
    res = EvalResult(indices=list(range(14)), scores=scores, labels=labels, ok=ok,
                     paths=[f"{i}.mp4" for i in range(14)], errors=[""] * 14, metrics=m)
    write_report(str(tmp_path), res, names, "1x1 views")
    text = (tmp_path / "report.txt").read_text().splitlines()
    start = text.index("per-class top-1 accuracy, worst first (4 classes with videos; failed videos counted wrong):")
    assert text[start + 1:start + 9] == [
        "  f   0.00%  0/2",
        "  c  25.00%  1/4",
        "  d  33.33%  1/3, 1 failed",
        "  a 100.00%  4/4",
        "most confused pairs (true -> predicted, decodable videos), top 3:",
        "  c -> d 3 videos (75.0% of c)",
        "  f -> a 2 videos (100.0% of f)",
        "  d -> c 1 video (50.0% of d)"]
    report = json.loads((tmp_path / "report.json").read_text())
    per_class = report["per_class"]
    assert [(r["name"], r["videos"], r["correct"], r["failed"]) for r in per_class] == [
        ("f", 2, 0, 0), ("c", 4, 1, 0), ("d", 3, 1, 1), ("a", 4, 4, 0)]
    # the per-class numbers are those compute_metrics averages into the mean class accuracy
    assert sum(r["top1"] for r in per_class) / 4 == pytest.approx(m["all"]["mean_class_acc"])
    assert [(p["true"], p["predicted"], p["videos"]) for p in report["confused_pairs"]] == [
        ("c", "d", 3), ("f", "a", 2), ("d", "c", 1)]


def test_confusion_png_shows_the_classes_present_named_at_a_bounded_size(tmp_path):
    """A 400-class label map with 4 classes present: the figure's axes name those 4 (in class order),
    the PNG is a few hundred pixels, not a 2400 px grid; all 400 present: at most the cap."""
    from PIL import Image

    from gcvideo.data.annotations import DEFAULT_KINETICS400_LABEL_MAP, read_label_map

    k400 = read_label_map(DEFAULT_KINETICS400_LABEL_MAP)
    names, scores6, labels, ok = _hand_made_results()
    present = [6, 30, 31, 212]  # a, c, d, f of the hand-made results become these Kinetics classes
    to_k400 = torch.tensor([6, 7, 30, 31, 8, 212])
    scores = torch.zeros(len(labels), 400)
    scores[:, to_k400] = scores6
    labels = torch.where(labels >= 0, to_k400[labels.clamp_min(0)], labels)
    m = compute_metrics(scores, labels, ok, 400)
    res = EvalResult(indices=list(range(14)), scores=scores, labels=labels, ok=ok,
                     paths=[f"{i}.mp4" for i in range(14)], errors=[""] * 14, metrics=m)
    write_report(str(tmp_path), res, k400, "1x1 views")
    w, h = Image.open(tmp_path / "confusion_matrix.png").size
    assert w <= 800 and h <= 800, (w, h)
    from gcvideo.engine.metrics import CONFUSION_DPI, CONFUSION_MAX_IN, confusion_figure, confusion_matrix

    fig, shown = confusion_figure(confusion_matrix(scores.argmax(1)[ok], labels[ok], 400), k400, "confusion")
    ax = fig.axes[0]
    assert shown == present
    assert [t.get_text() for t in ax.get_xticklabels()] == [k400[c] for c in present]
    assert [t.get_text() for t in ax.get_yticklabels()] == [k400[c] for c in present]
    assert "4 of 400 classes present" in ax.get_title()
    every = confusion_matrix(torch.arange(400).roll(1), torch.arange(400), 400)
    fig, shown = confusion_figure(every, k400, "confusion")
    assert len(shown) == 400 and max(fig.get_size_inches()) <= CONFUSION_MAX_IN + 1
    w, h = (fig.get_size_inches() * CONFUSION_DPI).tolist()
    assert w <= (CONFUSION_MAX_IN + 1) * CONFUSION_DPI and h <= CONFUSION_MAX_IN * CONFUSION_DPI


def test_confusion_title_stays_inside_the_figure():
    """The test's title names protocol, head and crop: long; it is wrapped, not cut at the edges."""
    from gcvideo.engine.metrics import confusion_figure

    cm = torch.eye(8, dtype=torch.long) * 25
    title = ("confusion (10x3 views (view_protocol gcvideo, head_pool global, test_crop_size 48), "
             "checkpoint_epoch0030)")
    fig, _ = confusion_figure(cm, [f"class_{i}" for i in range(8)], title)
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    width = fig.get_size_inches()[0] * fig.dpi
    assert box.x0 >= 0 and box.x1 <= width, (box, width)
