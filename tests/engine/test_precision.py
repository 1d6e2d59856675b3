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


def test_explicit_bf16_warns_once_where_emulated_with_the_measured_slowdown():
    avx2 = {"fpu", "avx2", "fma"}
    line = common.slow_bf16_warning("bf16", CPU, cpu_flags=avx2, slowdown=lambda d: 5.04)
    assert line.startswith("warning: TRAIN.MIXED_PRECISION = 'bf16'") and "\n" not in line
    assert "no bf16 matrix units" in line and "5.0x slower" in line and "TRAIN.MIXED_PRECISION auto" in line
    for flags in ({"avx2", "amx_bf16"}, {"avx2", "avx512_bf16"}):  # native bf16: no warning, no timing
        assert common.slow_bf16_warning("bf16", CPU, cpu_flags=flags, slowdown=never_called) == ""
    for mode in ("auto", "none"):  # only an explicit bf16 warns ("auto" picks fp32 there itself)
        assert common.slow_bf16_warning(mode, CPU, cpu_flags=avx2, slowdown=never_called) == ""


def test_slowdown_is_measured_as_bf16_time_over_fp32_time(monkeypatch):
    seen = []
    real = common.autocast
    monkeypatch.setattr(common, "autocast", lambda device, dtype: seen.append(dtype) or real(device, dtype))
    ratio = common._bf16_slowdown(CPU, repeats=1)
    assert ratio > 0 and seen == [torch.bfloat16] * 2 + [None] * 2


def test_training_with_explicit_bf16_on_an_avx2_cpu_prints_the_warning_once(tmp_path, capsys, monkeypatch):
    from engine_synthetic import builder, tiny_cfg
    from gcvideo.engine import train

    monkeypatch.setattr(common, "_cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(common, "_bf16_slowdown", lambda d: 9.0)
    train(tiny_cfg(tmp_path / "a", "SOLVER.MAX_EPOCH", 1, "TRAIN.MIXED_PRECISION", "bf16"), dataset_builder=builder())
    err = capsys.readouterr().err
    assert err.count("warning: TRAIN.MIXED_PRECISION = 'bf16'") == 1 and "9.0x slower" in err


def test_shipped_configs_do_not_force_bf16():
    """bf16 is a choice of the hardware (``auto``), not of a shipped recipe: forced, an AVX2 CPU ran the
    Kinetics fine-tuning recipe 5x slower."""
    import glob
    import yaml

    root = __file__.rsplit("/tests/", 1)[0]
    files = glob.glob(f"{root}/configs/**/*.yaml", recursive=True)
    assert len(files) >= 10
    forced = [f for f in files if ((yaml.safe_load(open(f)) or {}).get("TRAIN") or {}).get("MIXED_PRECISION")
              not in (None, "auto", "none")]
    assert forced == []


def test_explicit_bf16_on_a_gpu_without_native_bf16_warns(monkeypatch):
    gpu = torch.device("cuda", 0)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or False)
    line = common.slow_bf16_warning("bf16", gpu, slowdown=lambda d: 3.0)
    assert "this GPU has no native bf16" in line and "3.0x slower" in line and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert common.slow_bf16_warning("bf16", gpu, slowdown=never_called) == ""
