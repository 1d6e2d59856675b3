#!/usr/bin/env python
"""The README's "Using it" walk: its commands, as written, on a small Kinetics-style folder.

    python bench/readme_walk.py [--work DIR] [--results bench/results/readme_walk.md]

Makes, in --work (default: a new temporary folder, kept afterwards; the working directory of every
command): a flat Kinetics-style source folder (clips named {youtube_id}_{start:06d}_{end:06d}.mp4
or .webm, 4 Kinetics-400 classes, 2 training and 1 validation clips each, 64 px, 1 s; one annotated
clip absent as in every real download), the official CSVs kinetics_train.csv / kinetics_val.csv, a
random torchvision ResNet-50 state dict saved as resnet50.pth (the "ImageNet" weights, no download;
zero_init_residual), video.mp4 and other.avi (MPEG-4 in AVI). Then runs the commands of README.md's "Using it" block, read from the README (so the
walk follows the README when it changes), in order, changing only:

- the data paths /data/k400_raw and /data/k400 (to folders under the temporary folder);
- ``python`` -> this interpreter, ``tools/`` -> the repository's tools/, ``torchrun`` -> this
  interpreter's ``-m torch.distributed.run`` with ``--nproc-per-node 1`` (a CPU);
- CKPT, CONFIG, NL_CONFIG (the placeholders) -> the walk's checkpoint and configs;
- KEY VALUE size overrides appended to every command that reads a config (SIZE, TRAIN_SIZE below),
  so that it fits a 2-core CPU: the R50 depth and widths are kept, clips are 2 frames of 32 px.

The training command is interrupted with SIGINT (Ctrl-C) once it has saved its first epoch and run
again as written ("rerun the same command to resume"); the finished run is started a third time,
with the README's single-process line (``python tools/train_net.py``, same arguments).
The multi-node torchrun line (two machines) is not run. analyze_nonlocal needs a non-local model:
configs/kinetics400/slow_r50_8x8_nl5.yaml is inflated from the same resnet50.pth and trained for
one epoch with the README's single-process training line. count_flops is the command of the
README's "The paper's Kinetics table" section.

Each step: the command, exit status, wall seconds, the last line of output, into --results
(markdown); its whole output into WORK/<step>.log. Exit status 1 naming the step and its output's tail
when a step fails.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gcvideo.data.annotations import DEFAULT_KINETICS400_LABEL_MAP, read_label_map  # noqa: E402
from gcvideo.data.toy import render_video, write_video  # noqa: E402
from gcvideo.utils.io import atomic_write_text  # noqa: E402

CLASSES = ("abseiling", "air drumming", "answering questions", "applauding")  # Kinetics-400 names
TRAIN_PER_CLASS, VAL_PER_CLASS = 2, 1
SIZE_PX, FPS, SECONDS = 64, 25, 1
# the sizes every config-reading command gets (the checkpoint's views must match them)
SIZE = ("DATA.NUM_FRAMES 2 DATA.SAMPLING_RATE 2 DATA.TRAIN_CROP_SIZE 32 DATA.TEST_CROP_SIZE 32 "
        "DATA.TRAIN_JITTER_SCALES [32,40]")
# the training run's length and batch (2 cores): 3 epochs of 4 steps (7 clips, one annotated clip is
# missing), validated after each; the 30-view test is test_net's step
TRAIN_SIZE = ("TRAIN.BATCH_SIZE 2 SOLVER.MAX_EPOCH 3 SOLVER.WARMUP_EPOCHS 1.0 TRAIN.EVAL_PERIOD 1 "
              "TRAIN.PRECISE_BN_BATCHES 2 TRAIN.TEST_AT_END False")
NL_CONFIG = "configs/kinetics400/slow_r50_8x8_nl5.yaml"
NL_TRAIN_SIZE = ("TRAIN.BATCH_SIZE 2 SOLVER.MAX_EPOCH 1 SOLVER.WARMUP_EPOCHS 0.0 TRAIN.PRECISE_BN_BATCHES 2 "
                 "TRAIN.TEST_AT_END False")
# what the walk found (bench/results/readme_walk.md repeats it under the table)
FINDINGS = """\
What the walk found, and what became of it:

1. Ctrl-C during training: the worker's one line `SIGINT: saved ...; run the same command again to resume` was
   glued to the end of the progress bar (`epoch 2/3:   0%|   | 0/3 [...]SIGINT: saved ...`). Fixed: the
   run's messages go through `tqdm.write` (gcvideo/engine/logger.py; tests/engine/test_logger_lines.py).
2. Ctrl-C under torchrun: after that line, torchrun itself exits with status 1 and prints its own
   `SignalException` traceback (torch's launcher, not gcvideo; the checkpoint is saved and the same command
   resumes, as the rerun shows). Documented in docs/training.md (resuming).
3. `visualize_attention.py` with an `--out` that already holds its figures built the model and decoded the
   video before refusing. Fixed: refused first, one line, exit 2 (tests/analysis/test_attention.py).
4. Nothing else needed a change: every other command ran as written with only the paths changed. Not run:
   the two-machine torchrun line. `count_flops` is not in the "Using it" block; the walk takes it from the
   README's Kinetics-table section (`.venv/bin/python tools/count_flops.py ...`). Checked by hand on the same
   machine, 2026-12-07: the torchrun line with `--nproc-per-node 2` (two CPU processes, gloo) trained one epoch
   (`... OUTPUT_DIR runs/gc_all_2p <sizes> TRAIN.BATCH_SIZE 4 SOLVER.MAX_EPOCH 1 SOLVER.WARMUP_EPOCHS 0.0`), exit 0, 24 s.
"""


# ---------------------------------------------------------------------------
# the README's commands
# ---------------------------------------------------------------------------
def readme_block(readme: str, heading: str) -> List[str]:
    """The commands of the first ```bash block after ``heading``: continuation lines joined,
    comments, blank lines and the venv activation left out."""
    text = open(readme, encoding="utf-8").read()
    start = text.index(heading)
    m = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if m is None:
        raise SystemExit(f"error: no ```bash block after {heading!r} in {readme}")
    cmds, cur = [], ""
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(". "):
            continue
        if line.endswith("\\"):
            cur += line[:-1].strip() + " "
            continue
        cmds.append(re.sub(r"\s+#.*$", "", cur + line).strip())  # (a trailing comment dropped)
        cur = ""
    return cmds


def tool_of(cmd: str) -> str:
    m = re.search(r"tools/(\w+)\.py", cmd)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------
# the data a user brings
# ---------------------------------------------------------------------------
def _write_video(path: str, frames: np.ndarray, fps: int, fmt: str, codec: str) -> None:
    """(T, H, W, 3) uint8 RGB frames -> ``path`` in container ``fmt`` with ``codec`` (PyAV)."""
    import av
    with av.open(path, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.thread_count = 1
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_user_files(work: str) -> dict:
    """The raw clips, the official CSVs, resnet50.pth, video.mp4 and other.avi under ``work``."""
    import torch
    import torchvision

    names = read_label_map(DEFAULT_KINETICS400_LABEL_MAP)
    for c in CLASSES:
        assert c in names, c
    src = os.path.join(work, "k400_raw")
    os.makedirs(src, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = {"train": [], "val": []}
    n = 0
    for ci, cls in enumerate(CLASSES):
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            for k in range(count):
                yid = f"walk{n:03d}-{ci}{k}"[:11].ljust(11, "_")
                start = 10 * (n + 1)
                name = f"{yid}_{start:06d}_{start + 10:06d}"
                frames = render_video(rng, ci, FPS * SECONDS, SIZE_PX)  # (T, H, W, 3)
                if n == 1:
                    pass  # annotated, never downloaded: prepare_kinetics lists it in missing.txt
                elif n % 4 == 3:
                    _write_video(os.path.join(src, name + ".webm"), frames, FPS, "webm", "libvpx-vp9")
                else:
                    write_video(os.path.join(src, name + ".mp4"), frames, fps=FPS)
                rows[split].append((cls, yid, start, start + 10, split, 0))
                n += 1
    for split, file in (("train", "kinetics_train.csv"), ("val", "kinetics_val.csv")):
        with open(os.path.join(work, file), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
            w.writerows(rows[split])
    frames = render_video(rng, 0, FPS * SECONDS, SIZE_PX)
    write_video(os.path.join(work, "video.mp4"), frames, fps=FPS)
    _write_video(os.path.join(work, "other.avi"), render_video(rng, 2, FPS * SECONDS, SIZE_PX), FPS, "avi", "mpeg4")
    torch.manual_seed(0)
    # zero_init_residual (last BN of each block 0, as in trained nets its gammas are small): with
    # torchvision's default init the features are large and the new head's loss reached 1e3-1e4
    net = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    torch.save(net.state_dict(), os.path.join(work, "resnet50.pth"))
    return {"src": src, "dst": os.path.join(work, "k400"), "clips": n, "missing": 1}


# ---------------------------------------------------------------------------
# running the steps
# ---------------------------------------------------------------------------
@dataclass
class Step:
    name: str
    cmd: str
    rc: Optional[int] = None
    seconds: float = 0.0
    out: str = ""
    stdout: str = ""
    expect: str = ""  # a regular expression the output must contain
    expect_rc: Optional[int] = 0  # None: any non-zero status
    tolerate: str = ""  # a traceback whose last line matches this is recorded in the note, not a failure
    note: str = ""
    matched: str = ""  # the output line that ``expect`` found
    problems: List[str] = field(default_factory=list)

    @property
    def last_line(self) -> str:
        lines = [ln for ln in (self.stdout or self.out).replace("\r", "\n").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""

    @property
    def ok(self) -> bool:
        return self.rc is not None and not self.problems


def localise(cmd: str, paths: dict) -> str:
    """The README's command with the walk's paths and interpreter; nothing else changes."""
    py = shlex.quote(sys.executable)
    cmd = cmd.replace("/data/k400_raw", paths["src"]).replace("/data/k400", paths["dst"])
    cmd = re.sub(r"^torchrun ", f"{py} -m torch.distributed.run ", cmd)
    cmd = cmd.replace("--nproc-per-node 8", "--nproc-per-node 1")
    cmd = re.sub(r"^(\.venv/bin/)?python ", f"{py} ", cmd)
    cmd = cmd.replace(" tools/", f" {shlex.quote(os.path.join(REPO, 'tools'))}/")
    for key in ("NL_CONFIG", "CONFIG", "CKPT"):
        if key in paths:
            cmd = re.sub(rf"\b{key}\b", paths[key], cmd)
    return cmd


def _check(step: Step) -> None:
    if step.rc != step.expect_rc and not (step.expect_rc is None and step.rc):
        step.problems.append(f"exit status {step.rc}, expected {step.expect_rc or 'non-zero'}")
    if step.expect:
        m = re.search(rf"^.*(?:{step.expect}).*$", step.out.replace("\r", "\n"), re.M)
        if m is None:
            step.problems.append(f"output lacks /{step.expect}/")
        else:
            step.matched = m.group(0).strip()
    if "Traceback (most recent call last)" in step.out:
        last = step.out.rsplit("Traceback (most recent call last)", 1)[1].strip().splitlines()[-1]
        if step.tolerate and re.search(step.tolerate, last):
            step.note += f"; then torchrun's own traceback, ending `{last.strip()[:90]}`"
        else:
            step.problems.append("a traceback in the output")


def run(step: Step, work: str, timeout: float = 1800) -> Step:
    print(f"--- {step.name}: {step.cmd}", flush=True)
    t0 = time.time()
    r = subprocess.run(shlex.split(step.cmd), cwd=work, capture_output=True, text=True, timeout=timeout,
                       env=_env())
    step.seconds, step.rc, step.out = time.time() - t0, r.returncode, r.stdout + r.stderr
    step.stdout = r.stdout
    with open(os.path.join(work, f"{step.name}.log"), "w") as f:  # the whole output, to read afterwards
        f.write(step.out)
    _check(step)
    print(f"    exit {step.rc}, {step.seconds:.1f} s: {step.last_line}", flush=True)
    return step


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))


def run_interrupted(step: Step, work: str, wait_for: str, timeout: float = 1800) -> Step:
    """Start the command, send SIGINT (Ctrl-C, to its process group, as a terminal does) when
    ``wait_for`` exists, and wait for it to exit."""
    print(f"--- {step.name}: {step.cmd}  (Ctrl-C after {os.path.basename(wait_for)})", flush=True)
    t0 = time.time()
    log = os.path.join(work, f"{step.name}.log")
    with open(log, "w") as f:
        p = subprocess.Popen(shlex.split(step.cmd), cwd=work, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                             start_new_session=True)
        sent = False
        while p.poll() is None and time.time() - t0 < timeout:
            if not sent and os.path.exists(wait_for):
                os.killpg(p.pid, signal.SIGINT)
                sent = True
            time.sleep(0.1)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    step.seconds, step.rc, step.out = time.time() - t0, p.returncode, open(log).read()
    if not sent:
        step.problems.append(f"finished before {os.path.basename(wait_for)} appeared: nothing interrupted")
    _check(step)
    print(f"    exit {step.rc}, {step.seconds:.1f} s: {step.last_line}", flush=True)
    return step


def walk(work: str) -> List[Step]:
    readme = os.path.join(REPO, "README.md")
    using = readme_block(readme, "## Using it")
    flops = [c for c in readme_block(readme, "## The paper's Kinetics table") if tool_of(c) == "count_flops"]
    by_tool = {}
    for c in using:
        t = tool_of(c)
        if c.startswith("torchrun") and "--nnodes" in c:
            t = "train_net_multinode"
        by_tool.setdefault(t, c)
    need = ["prepare_kinetics", "check_videos", "inflate_imagenet", "train_net", "test_net", "predict",
            "visualize_attention", "analyze_nonlocal", "export"]
    absent = [t for t in need if t not in by_tool]
    if absent or not flops:
        raise SystemExit(f"error: README.md's commands lack {absent or ['count_flops']}: update bench/readme_walk.py")

    print(f"user files in {work} ...", flush=True)
    paths = make_user_files(work)
    run_dir = os.path.join(work, "runs", "gc_all")
    ckpt_final = os.path.join(run_dir, "checkpoints", "checkpoint_epoch0003.pth")
    train_cfg = re.search(r"--config (\S+)", by_tool["train_net"]).group(1)
    paths.update(CKPT=ckpt_final, CONFIG=train_cfg)
    steps: List[Step] = []

    def go(name, cmd, extra="", **kw):
        s = Step(name, localise(cmd, paths) + (" " + extra if extra else ""), **kw)
        steps.append(s)
        return s

    prep = go("prepare_kinetics", by_tool["prepare_kinetics"], expect=r"1 annotated clips not in --src")
    if not run(prep, work).ok:
        return steps
    check = go("check_videos", by_tool["check_videos"], expect=r"^0 of \d+ videos cannot be used")
    if not run(check, work).ok:
        return steps
    inflate = go("inflate_imagenet", by_tool["inflate_imagenet"], expect=r"^wrote inflated/")
    if not run(inflate, work).ok:
        return steps
    train = go("train_net (Ctrl-C)", by_tool["train_net"], f"{SIZE} {TRAIN_SIZE}", expect_rc=None,
               expect=r"SIGINT: saved .*; run the same command again to resume", tolerate=r"SignalException")
    train.note = "torchrun --nproc-per-node 1, SIGINT to its process group once epoch 1 is saved"
    if not run_interrupted(train, work, os.path.join(run_dir, "checkpoints", "checkpoint_epoch0001.pth")).ok:
        return steps
    resume = go("train_net (rerun: resume)", by_tool["train_net"], f"{SIZE} {TRAIN_SIZE}",
                expect=r"^resuming from .*checkpoint_epoch000[12]\S*: epoch 2")
    if not run(resume, work).ok:
        return steps
    single = "python tools/train_net.py" + by_tool["train_net"].split("tools/train_net.py", 1)[1]
    again = go("train_net (rerun a finished run, CPU line)", single, f"{SIZE} {TRAIN_SIZE}",
               expect=r"^run finished at epoch 3")
    if not run(again, work).ok:
        return steps
    test = go("test_net", by_tool["test_net"], SIZE, expect=r"10x3 views .*top-1")
    if not run(test, work).ok:
        return steps
    pred = go("predict", by_tool["predict"], expect=r"other\.avi")
    if not run(pred, work).ok:
        return steps
    vis = go("visualize_attention", by_tool["visualize_attention"], SIZE, expect=r"attention of video\.mp4")
    if not run(vis, work).ok:
        return steps
    # a non-local model for analyze_nonlocal: inflated and trained one epoch by the README's own lines
    nl_ckpt_dir = os.path.join(work, "runs", "nl5")
    paths.update(NL_CONFIG=NL_CONFIG)
    nl_inflate = go("inflate_imagenet (NL model)", by_tool["inflate_imagenet"].replace(train_cfg, NL_CONFIG)
                    .replace("inflated/slow_r50_gc_all.pth", "inflated/slow_r50_nl5.pth")
                    .replace("slow_r50_8x8_gc_all.yaml", "slow_r50_8x8_nl5.yaml"))
    if not run(nl_inflate, work).ok:
        return steps
    nl_train = go("train_net (NL model, one epoch)",
                  single.replace("slow_r50_8x8_gc_all_finetune.yaml",
                                                               "slow_r50_8x8_nl5.yaml")
                  .replace("inflated/slow_r50_gc_all.pth", "inflated/slow_r50_nl5.pth")
                  .replace("runs/gc_all", "runs/nl5"),
                  f"{SIZE} {NL_TRAIN_SIZE}")
    if not run(nl_train, work).ok:
        return steps
    paths["CKPT"] = os.path.join(nl_ckpt_dir, "checkpoints", "checkpoint_epoch0001.pth")
    nl = go("analyze_nonlocal", by_tool["analyze_nonlocal"], SIZE, expect=r"^report: nl\.json")
    paths["CKPT"] = ckpt_final
    if not run(nl, work).ok:
        return steps
    fl = go("count_flops", flops[0], SIZE, expect=r"^FLOPs at 2x32x32")
    if not run(fl, work).ok:
        return steps
    ex = go("export", by_tool["export"], SIZE, expect=r"^wrote model\.onnx")
    run(ex, work)
    return steps


# ---------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------
def machine() -> str:
    cpu = ""
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = re.search(r"Model name:\s*(.*)", cpu).group(1).strip()
    except Exception:  # noqa: BLE001 (lscpu missing: the platform's name is enough)
        cpu = platform.processor()
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
        cpu += " (AVX-512)" if "avx512f" in flags else " (AVX2 only)" if "avx2" in flags else ""
    except (OSError, AttributeError):  # not Linux
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs, {gpu}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


def table(steps: List[Step], work: str) -> str:
    def cell(s: str) -> str:
        return s.replace(work, "$WORK").replace(sys.executable, "python").replace(REPO + "/", "").replace("|", "\\|")

    rows = ["| step | exit | seconds | last line of output | line checked |", "|---|---|---|---|---|"]
    for s in steps:
        checked = f"`{cell(s.matched)[:160]}`" if s.matched else ""
        rows.append(f"| {s.name} | {s.rc}{'' if s.ok else ' FAILED'} | {s.seconds:.1f} | `{cell(s.last_line)[:160]}` "
                    f"| {checked} |")
    cmds = "\n".join(f"# {s.name}{' (' + s.note + ')' if s.note else ''}\n{cell(s.cmd)}" for s in steps)
    return "\n".join(rows) + "\n\nThe commands ($WORK: the temporary folder, the working directory of each):\n\n" \
        f"```bash\n{cmds}\n```\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="", help="working folder (default: a new temporary one)")
    ap.add_argument("--results", default="", help="write the markdown table here")
    args = ap.parse_args(argv)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="readme_walk_")
    os.makedirs(work, exist_ok=True)
    if os.listdir(work):
        print(f"error: --work {work} is not empty: give an empty or new folder", file=sys.stderr)
        return 2
    t0 = time.time()
    steps = walk(work)
    total = time.time() - t0
    text = table(steps, work)
    failed = [s for s in steps if not s.ok]
    print(text)
    if args.results:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        head = (f"# The README's \"Using it\" walk\n\n`python bench/readme_walk.py --results {args.results}`, "
                f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()} (a shared host, load average {load:.1f} at "
                f"the end); {total:.0f} s in all.\n\nThe README's commands as written, with the paths changed and "
                f"these sizes appended (R50 depth and widths kept; 2 frames of 32 px): `{SIZE}`; training also "
                f"`{TRAIN_SIZE}`. Data: {len(CLASSES)} Kinetics-400 classes, {TRAIN_PER_CLASS} training and "
                f"{VAL_PER_CLASS} validation clips each (one annotated clip absent), {SIZE_PX} px, {SECONDS} s; "
                "the label map and MODEL.NUM_CLASSES stay Kinetics-400's (400). How and why: the docstring of "
                "bench/readme_walk.py.\n\n")
        atomic_write_text(args.results, head + text + "\n" + FINDINGS)
    if failed:
        s = failed[0]
        tail = "\n".join(s.out.splitlines()[-25:])
        print(f"error: step {s.name!r} failed ({'; '.join(s.problems)}):\n{tail}", file=sys.stderr)
        return 1
    print(f"all {len(steps)} steps passed in {total:.0f} s; work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
