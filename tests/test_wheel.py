"""A non-editable install runs the main job: the wheel carries the configs and the Kinetics label map
(package data), and its console commands work from a folder outside the repository.

Builds the wheel of a copy of the source tree, installs it (no dependencies) into a fresh virtual
environment that reuses this interpreter's packages (torch & co.) through a .pth file, and runs
``gcvideo-toy --help``, a one-epoch tiny toy run and ``gcvideo-count-flops`` from a temporary folder.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "gcvideo", "tools", "configs", "datasets")  # what setup.py packages


def _run(cmd, cwd, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1"))
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _build_wheel(tmp):
    src = os.path.join(tmp, "src")
    for name in SOURCES:
        s = os.path.join(ROOT, name)
        if os.path.isdir(s):
            shutil.copytree(s, os.path.join(src, name), ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            os.makedirs(src, exist_ok=True)
            shutil.copy(s, src)
    try:  # build with the setuptools installed here (offline) when it can make wheels
        import setuptools

        own = tuple(int(v) for v in setuptools.__version__.split(".")[:2]) >= (70, 1)
        if not own:
            import wheel  # noqa: F401
        isolation = ["--no-build-isolation", "--no-index"]
    except ImportError:
        isolation = []  # pip fetches setuptools + wheel
    dist = os.path.join(tmp, "dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", dist, "./src"], cwd=tmp)
    (whl,) = glob.glob(os.path.join(dist, "gcvideo-*.whl"))
    return whl


def _fresh_venv(tmp):
    """A venv whose site-packages sees this interpreter's site-packages (torch, pip, ...) but not the
    gcvideo checkout: .pth lines add folders without running the .pth files (editable finders) in them."""
    venv = os.path.join(tmp, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    py = os.path.join(venv, "bin", "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    parents += [sysconfig.get_paths()["purelib"]]
    with open(os.path.join(site, "parent_site_packages.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(parents)) + "\n")
    return venv, site


@pytest.mark.slow
def test_wheel_installs_and_runs_the_main_job_outside_the_repository(tmp_path):
    tmp = str(tmp_path)
    whl = _build_wheel(tmp)
    names = zipfile.ZipFile(whl).namelist()
    for f in ("gcvideo/configs/toy/slow_gc_toy.yaml", "gcvideo/configs/kinetics400/slow_r50_8x8_gc_all.yaml",
              "gcvideo/datasets/kinetics400/label_map.txt", "gcvideo/tools/run_toy.py",
              "gcvideo/layers/fused/_gc_kernels.c"):
        assert f in names, f"{f} is not in the wheel"
    shipped = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))
    assert sorted(n[len("gcvideo/"):] for n in names if n.startswith("gcvideo/configs/")) == shipped

    venv, site = _fresh_venv(tmp)
    py, bin_ = os.path.join(venv, "bin", "python"), os.path.join(venv, "bin")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", whl], cwd=tmp)
    work = tmp_path / "elsewhere"
    work.mkdir()
    cwd = str(work)
    # the installed package, with its own label map (400 classes), not the checkout
    out = _run([py, "-c", "import gcvideo, gcvideo.data.annotations as a; "
                "print(gcvideo.__file__); print(a.DEFAULT_KINETICS400_LABEL_MAP); "
                "print(len(a.read_label_map(a.DEFAULT_KINETICS400_LABEL_MAP)))"], cwd=cwd)
    pkg, label_map, n = out.split()
    assert pkg.startswith(site) and label_map.startswith(site) and n == "400", out
    # a shipped config that inherits (_BASE_ chain r16 -> gc_all -> slow_r50_8x8) resolves from the package
    out = _run([py, "-c", "from gcvideo.config import load_cfg; c = load_cfg('configs/kinetics400/"
                "slow_r50_8x8_gc_all_r16.yaml', check_files=False); print(c.MODEL.NUM_CLASSES, c.CONTEXT.TYPE, "
                "c.CONTEXT.RATIO, c.DATA.LABEL_MAP.startswith('" + site + "'))"], cwd=cwd)
    assert out.split()[-4:] == ["400", "gc", "0.0625", "True"], out

    assert "--no-attention" in _run([os.path.join(bin_, "gcvideo-toy"), "--help"], cwd=cwd)
    _run([os.path.join(bin_, "gcvideo-make-toy-dataset"), "--out", "toy", "--num-train", "16", "--num-val", "8",
          "--size", "48", "--frames", "24", "--workers", "1", "--quiet"], cwd=cwd)
    out = _run([os.path.join(bin_, "gcvideo-toy"), "--data", "toy", "--no-attention", "SOLVER.MAX_EPOCH", "1",
                "SOLVER.WARMUP_EPOCHS", "0", "TEST.NUM_ENSEMBLE_VIEWS", "1", "TEST.NUM_SPATIAL_CROPS", "1",
                "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", "runs/toy"], cwd=cwd)
    assert "top-1" in out and os.path.exists(os.path.join(cwd, "runs", "toy", "checkpoints")), out[-2000:]
    assert os.path.isfile(os.path.join(cwd, "runs", "toy", "test_checkpoint_epoch0001_1x1", "report.txt"))
    out = _run([os.path.join(bin_, "gcvideo-count-flops"), "--config", "configs/toy/slow_gc_toy.yaml"], cwd=cwd)
    assert out.startswith("config: configs/toy/slow_gc_toy.yaml") and "FLOPs at" in out, out
