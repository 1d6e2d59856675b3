"""Run the engine on the synthetic dataset in a child process (for kill / resume / torchrun tests).

    python engine_runner.py OUT MODE SPEC_JSON [KEY VALUE ...]

MODE: "train" or "test". SPEC_JSON: {"builder": {...kwargs of synthetic.builder},
"signal_at": [epoch, n, signal, marker], "signal_at_test": [n, signal, marker],
"kill_in_checkpoint_write": k} -- the last one
SIGKILLs this process inside the k-th checkpoint write (after the data, before the rename).
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from engine_synthetic import builder, tiny_cfg  # noqa: E402


def main() -> None:
    out, mode, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    torch.set_num_threads(1)
    cfg = tiny_cfg(out, *sys.argv[4:], num_classes=spec.get("num_classes", 4))
    kw = spec.get("builder", {})
    if spec.get("signal_at"):
        kw.setdefault("train", {})["signal_at"] = tuple(spec["signal_at"])
    if spec.get("signal_at_test"):  # [n, signal, marker]: at the n-th item of the val/test sets
        kw.setdefault("test", {})["signal_at"] = (0, *spec["signal_at_test"])
    build = builder(**kw)
    if spec.get("kill_in_checkpoint_write"):
        import gcvideo.utils.io as gio
        real_fsync, calls = os.fsync, {"n": 0}

        def fsync(fd):
            name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
            if ".pth.tmp-" in name:
                calls["n"] += 1
                if calls["n"] == spec["kill_in_checkpoint_write"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        gio.os.fsync = fsync
    from gcvideo.engine import test, train
    if mode == "train":
        res = train(cfg, dataset_builder=build)
    else:
        res = test(cfg, dataset_builder=build)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 and res is not None:
        with open(os.path.join(out, f"result_{mode}.json"), "w") as f:
            json.dump({k: v for k, v in res.items() if k in ("metrics", "global_iter", "val", "report_dir")}, f)


if __name__ == "__main__":
    main()
