"""prepare_kinetics and check_videos never lose or misplace a user's file, and say what they did.

Issues 35/36: workers die with a killed parent, one run per destination, splits are plain names,
two sources never become one output, the destination is not walked as a source, failures and
a full disk end with a non-zero exit, unknown classes and clips absent from --src are named.
"""
import contextlib
import errno
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import data_helpers as H

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_video(path, frames=6):
    """A 64x48 h264 clip of ``frames`` frames (milliseconds to write and to re-encode)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return H.write_index_video(str(path), frames, width=64, height=48, gop=4)


def tool(name, *args):
    """(exit code, stdout, stderr) of tools/<name> run in this process."""
    spec = importlib.util.spec_from_file_location("tool_" + name[:-3], os.path.join(ROOT, "tools", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = mod.main([*args, "--quiet"])
        except SystemExit as e:  # argparse, or a tool that exits itself
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


# A prepare run in its own process whose re-encoding waits: each job writes WAIT/<pid>.started,
# then waits until WAIT/go exists (at most 60 s) before encoding for real.
SLOW_PREPARE = textwrap.dedent("""
    import json, os, sys, time
    import gcvideo.data.prepare as P
    wait, src, dst, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real = P.reencode_video
    def slow(*a, **k):
        open(os.path.join(wait, f"{os.getpid()}.started"), "w").close()
        t0 = time.time()
        while not os.path.exists(os.path.join(wait, "go")) and time.time() - t0 < 60:
            time.sleep(0.05)
        return real(*a, **k)
    P.reencode_video = slow
    s = P.prepare_kinetics(src, dst, short_side=32, workers=workers, progress=False)
    print(json.dumps(s))
""")


def start_slow_prepare(wait, src, dst, workers):
    os.makedirs(wait, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(wait), str(src), str(dst), str(workers)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def alive(pid):
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_stops_its_workers(tmp_path):
    for k in range(4):
        tiny_video(tmp_path / "src" / "abseiling" / f"c{k}.mp4")
    wait = tmp_path / "wait"
    proc = start_slow_prepare(wait, tmp_path / "src", tmp_path / "dst", 2)
    try:
        wait_for(lambda: len(list(wait.glob("*.started"))) == 2, 120, "two workers encoding")
        workers = [int(p.name.split(".")[0]) for p in wait.glob("*.started")]
        assert proc.pid not in workers and all(alive(w) for w in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        wait_for(lambda: not any(alive(w) for w in workers), 10, f"workers {workers} to end with their parent")
    finally:
        (wait / "go").touch()  # old code: let orphaned workers finish instead of sleeping 60 s
        if proc.poll() is None:
            proc.kill()
            proc.wait()
