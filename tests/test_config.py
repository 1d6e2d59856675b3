"""Config: one place for defaults, flat YAML overrides, command-line pairs, clear validation errors."""
import glob
import re

import pytest

from gcvideo.config import ConfigError, context_indices, get_cfg, load_cfg


def test_get_cfg_returns_fresh_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.DEPTH = 101
    assert b.MODEL.DEPTH == 50


def test_every_key_has_a_comment():
    """Each key in gcvideo/config.py is defined once, with a comment on a line above it."""
    lines = open("gcvideo/config.py").read().splitlines()
    keys = []
    for i, line in enumerate(lines):
        m = re.match(r"_C\.([A-Z_.]+) = (?!CfgNode)", line)
        if not m:
            continue
        keys.append(m.group(1))
        j = i - 1
        while j >= 0 and re.match(r"_C\.[A-Z_.]+ = (?!CfgNode)", lines[j]):
            j -= 1  # a group of related keys may share one comment
        assert lines[j].lstrip().startswith("#"), f"{m.group(1)} has no comment"
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("path", sorted(glob.glob("configs/**/*.yaml", recursive=True)))
def test_shipped_configs_load(path):
    load_cfg(path, check_files=False)


def test_yaml_and_command_line_override(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("MODEL:\n  DEPTH: 101\nSOLVER:\n  BASE_LR: 1\nCONTEXT:\n  TYPE: gc\n  LOCATION: all\n")
    cfg = load_cfg(str(y), ["SOLVER.BASE_LR", "0.2", "CONTEXT.RATIO", "0.0625"])
    assert cfg.MODEL.DEPTH == 101
    assert cfg.SOLVER.BASE_LR == 0.2 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.CONTEXT.RATIO == 0.0625
    assert context_indices(cfg.CONTEXT.LOCATION, [3, 4, 23, 3])[2] == list(range(23))
    cfg2 = load_cfg(str(y))
    assert cfg2.SOLVER.BASE_LR == 1.0  # int in YAML coerced to the default's float


@pytest.mark.parametrize("opts,pattern", [
    (["MODEL.DEPHT", "50"], r"unknown config key MODEL\.DEPHT \(did you mean MODEL\.DEPTH\?\)"),
    (["MODEL.DEPTH", "34"], r"MODEL\.DEPTH = 34 .*one of 50, 101, 152"),
    (["MODEL.DEPTH", "'fifty'"], r"MODEL\.DEPTH = 'fifty' has type str; expected int"),
    (["CONTEXT.TYPE", "gcnet"], r"CONTEXT\.TYPE = 'gcnet'.*'gc'"),
    (["CONTEXT.TYPE", "gc", "CONTEXT.LOCATION", "[[], [4], [], []]"],
     r"LOCATION\[1\] \(res3, 4 blocks\) = 4 .*0\.\.3"),
    (["CONTEXT.TYPE", "gc", "CONTEXT.LOCATION", "[[], [1], [], []]", "CONTEXT.RATIO", "0.3"],
     r"CONTEXT\.RATIO = 0\.3 .*res3 has C = 512"),
    (["CONTEXT.LOCATION", "all"], r"CONTEXT\.TYPE = 'none'"),
    (["TRAIN.INIT_FROM", "/no/such/resnet50.pth"], r"TRAIN\.INIT_FROM = '/no/such/resnet50\.pth': file does not exist"),
    (["DATA.TRAIN_CROP_SIZE", "300"], r"DATA\.TRAIN_CROP_SIZE = 300"),
    (["SOLVER.WARMUP_EPOCHS", "500.0"], r"SOLVER\.WARMUP_EPOCHS = 500\.0"),
    (["MODEL.DEPTH"], r"KEY VALUE pairs"),
])
def test_bad_values_fail_before_work_with_clear_message(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_cfg(None, opts)


def test_unknown_key_in_yaml_names_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("MODEL:\n  DEPTH: 50\n  WIDHT: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key MODEL\.WIDHT.*MODEL\.WIDTH"):
        load_cfg(str(y))
    with pytest.raises(ConfigError, match="does not exist"):
        load_cfg(str(tmp_path / "missing.yaml"))


def test_loaded_config_is_frozen():
    cfg = load_cfg()
    with pytest.raises(AttributeError):
        cfg.MODEL.DEPTH = 101
