"""TRAIN.MIXED_PRECISION "auto": bf16 where the device has bf16 matrix units and it is faster, else fp32."""
import pytest
import torch

from gcvideo.config import ConfigError, load_cfg
from gcvideo.engine import precision as common
from gcvideo.engine.precision import autocast_dtype, resolve_precision

CPU = torch.device("cpu")


def never_called(_device):
    raise AssertionError("the bf16 timing must not run without bf16 instructions")


@pytest.mark.parametrize("mode", ["none", "bf16", "fp16"])
def test_explicit_modes_are_kept(mode):
    assert resolve_precision(mode, CPU, cpu_flags=set(), bf16_faster=never_called) == mode


def test_cpu_without_bf16_instructions_is_fp32_without_timing():
    avx2_only = {"fpu", "sse2", "avx", "avx2", "fma", "f16c", "avx512f"}  # AVX-512 without BF16 either
    assert resolve_precision("auto", CPU, cpu_flags=avx2_only, bf16_faster=never_called) == "none"


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_cpu_with_bf16_units_uses_bf16_only_when_measured_faster(flag):
    seen = []
    assert resolve_precision("auto", CPU, {"avx2", flag}, lambda d: seen.append(d) or True) == "bf16"
    assert seen == [CPU]
    assert resolve_precision("auto", CPU, {"avx2", flag}, lambda d: False) == "none"


def test_cuda_follows_bf16_support(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", gpu, bf16_faster=never_called) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", gpu, bf16_faster=never_called) == "none"


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
    assert common._cpu_flags() == {"fpu", "avx2", "amx_bf16", "amx_tile"}


def test_auto_autocast_dtype_goes_through_the_resolution(monkeypatch):
    cfg = "auto"  # TRAIN.MIXED_PRECISION
    monkeypatch.setattr(common, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    monkeypatch.setattr(common, "_bf16_measures_faster", lambda d: True)
    assert autocast_dtype(cfg, CPU) is torch.bfloat16
    monkeypatch.setattr(common, "_bf16_measures_faster", lambda d: False)
    assert autocast_dtype(cfg, CPU) is None
    monkeypatch.setattr(common, "_cpu_flags", lambda: {"avx2"})
    assert autocast_dtype(cfg, CPU) is None


def test_config_accepts_auto_and_names_the_choices():
    assert load_cfg(None, ["TRAIN.MIXED_PRECISION", "auto"], check_files=False).TRAIN.MIXED_PRECISION == "auto"
    with pytest.raises(ConfigError, match="auto"):
        load_cfg(None, ["TRAIN.MIXED_PRECISION", "fastest"], check_files=False)
