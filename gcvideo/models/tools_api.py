"""Library functions behind the model tools (tools/inflate_imagenet.py)."""
from __future__ import annotations

from typing import Optional, Sequence

from gcvideo.config import load_cfg
from gcvideo.models.build import build_model
from gcvideo.models.inflate import InflationReport, inflate_state_dict
from gcvideo.utils.io import atomic_save, load_checkpoint_file, path_manager


def inflate_imagenet_checkpoint(src: str, config: str, dst: str, opts: Optional[Sequence[str]] = None,
                                overwrite: bool = False) -> InflationReport:
    """Read a 2D ResNet checkpoint, inflate it for the model of ``config``, write ``dst`` atomically."""
    if path_manager.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} already exists; refusing to overwrite it (pass --overwrite)")
    cfg = load_cfg(config, opts)
    model = build_model(cfg)
    report = InflationReport()
    sd3 = inflate_state_dict(load_checkpoint_file(src), model, report)
    model.load_state_dict(sd3, strict=True)  # checks the result fits before writing
    atomic_save({"model": sd3, "inflated_from": src, "config": cfg.dump()}, dst)
    print(report.summary())
    print(f"wrote {dst}")
    return report
