"""Config: one place for defaults, flat YAML overrides, command-line pairs, clear validation errors."""
import glob
import os
import re

import pytest

from gcvideo.config import ConfigError, context_indices, get_cfg, load_cfg


SHIPPED = sorted(glob.glob("configs/**/*.yaml", recursive=True))


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


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_configs_load(path):
    load_cfg(path, check_files=False)


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _own_keys(path):
    import yaml

    d = yaml.safe_load(open(path)) or {}
    return d.pop("_BASE_", None), set(_flat(d))


@pytest.mark.parametrize("path", [p for p in SHIPPED if _own_keys(p)[0]])
def test_a_shipped_config_is_its_base_plus_the_keys_it_sets(path):
    """A child's resolved config equals its base's but for the keys it sets (OUTPUT_DIR is named after
    the file given), and it changes at least one of them."""
    base_name, own = _own_keys(path)
    base = _flat(load_cfg(os.path.join(os.path.dirname(path), base_name), check_files=False))
    child = _flat(load_cfg(path, check_files=False))
    assert set(child) == set(base)
    differ = {k for k in child if child[k] != base[k]}
    assert differ - {"OUTPUT_DIR"} <= own, (path, sorted(differ - own))
    assert differ & own, path


def test_the_table_10_configs_share_one_base():
    """Every Kinetics-400 config inherits slow_r50_8x8.yaml (directly or through another config)."""
    folder = "configs/kinetics400"
    for path in glob.glob(f"{folder}/*.yaml"):
        chain, name = [], os.path.basename(path)
        while name is not None and name != "slow_r50_8x8.yaml":
            chain.append(name)
            name = _own_keys(os.path.join(folder, name))[0]
        assert name == "slow_r50_8x8.yaml", f"{path} does not inherit slow_r50_8x8.yaml: {chain}"


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
    (["DATA.PREFETCH_FACTOR", "0"], r"DATA\.PREFETCH_FACTOR = 0 .*positive number of batches per worker"),
    (["TRAIN.CPU_THREADS", "-1"], r"TRAIN\.CPU_THREADS = -1 .*0 \(automatic\) or a positive thread count"),
    (["DIST.TIMEOUT", "0"], r"DIST\.TIMEOUT = 0\.0 .*a number of seconds >= 1"),
    (["DIST.TIMEOUT", "1e999"], r"DIST\.TIMEOUT = inf "),
    (["SOLVER.WARMUP_EPOCHS", "500.0"], r"SOLVER\.WARMUP_EPOCHS = 500\.0"),
    # a warm-up as long as training: the LR never reaches its peak (refused, not silently accepted)
    (["SOLVER.MAX_EPOCH", "10", "SOLVER.WARMUP_EPOCHS", "10.0"],
     r"SOLVER\.WARMUP_EPOCHS = 10\.0 .*0 <= it < SOLVER\.MAX_EPOCH \(10\)"),
    (["MODEL.DEPTH"], r"KEY VALUE pairs"),
    (["CONTEXT.RATIO", "None"], r"CONTEXT\.RATIO = None is empty .*expected float"),
    (["MODEL.WIDTH", "null"], r"MODEL\.WIDTH = None is empty"),
    (["MODEL.STEM_KERNEL", "['a', 7, 7]"], r"MODEL\.STEM_KERNEL = .*element 'a' at position 0, not an integer"),
    (["DATA.MEAN", "[0.4, 'x', 0.4]"], r"DATA\.MEAN = .*element 'x' at position 1, not a number"),
    (["DATA.TRAIN_JITTER_SCALES", "[256, True]"], r"element True at position 1, not an integer"),
    (["MODEL.STAGE_DEPTHS", "[1, 1, 1, 1.5]"], r"MODEL\.STAGE_DEPTHS = .*element 1\.5"),
    (["DATA.FLIP_LABEL_PAIRS", "[[0, 1], [2]]"], r"DATA\.FLIP_LABEL_PAIRS = .*not a pair of class indices"),
    (["CONTEXT.TYPE", "gc", "CONTEXT.LOCATION", "[[], [True], [], []]"], r"LOCATION\[1\].* = True"),
    (["MODEL", "3"], r"MODEL = 3 is a section of config keys"),
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


def test_string_keys_take_command_line_text_verbatim():
    cfg = load_cfg(None, ["OUTPUT_DIR", "null", "TEST.CHECKPOINT", ""], check_files=False)
    assert cfg.OUTPUT_DIR == "null"


def test_configs_edited_in_python_are_checked_by_build_model():
    from gcvideo.models import build_model

    cfg = get_cfg()
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION = "gc", [[], [7], [], []]  # res3 has 4 blocks
    with pytest.raises(ConfigError, match=r"LOCATION\[1\] \(res3, 4 blocks\) = 7"):
        build_model(cfg)
    cfg.CONTEXT.LOCATION, cfg.CONTEXT.RATIO = [[], [1], [], []], None
    with pytest.raises(ConfigError, match=r"CONTEXT\.RATIO = None"):
        build_model(cfg)


def test_each_config_file_gets_its_own_output_dir(tmp_path):
    y = tmp_path / "my_gc_run.yaml"
    y.write_text("CONTEXT:\n  TYPE: gc\n")
    assert load_cfg(str(y)).OUTPUT_DIR == "runs/my_gc_run"
    assert load_cfg(str(y), ["OUTPUT_DIR", "/data/out"]).OUTPUT_DIR == "/data/out"
    (tmp_path / "explicit.yaml").write_text("OUTPUT_DIR: runs/here\n")
    assert load_cfg(str(tmp_path / "explicit.yaml")).OUTPUT_DIR == "runs/here"
    assert load_cfg().OUTPUT_DIR == "runs/default"


def test_shipped_label_map_found_from_any_working_directory(tmp_path, monkeypatch):
    cfg_file = os.path.abspath("configs/kinetics400/slow_r50_8x8_gc_all.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_cfg(cfg_file)  # DATA.LABEL_MAP: datasets/kinetics400/label_map.txt, relative
    assert os.path.isabs(cfg.DATA.LABEL_MAP) and open(cfg.DATA.LABEL_MAP).readline().strip() == "abseiling"
    with pytest.raises(ConfigError, match="DATA.LABEL_MAP = 'no/such/map.txt': file does not exist"):
        load_cfg(cfg_file, ["DATA.LABEL_MAP", "no/such/map.txt"])


def test_command_line_list_overrides_a_yaml_all_for_context_location(tmp_path):
    """The key's allowed forms decide how the command-line text is read, not the YAML's value."""
    y = tmp_path / "gc_all.yaml"
    y.write_text("CONTEXT:\n  TYPE: gc\n  LOCATION: all\n")
    cfg = load_cfg(str(y), ["CONTEXT.LOCATION", "[[], [1, 3], [], []]"])
    assert cfg.CONTEXT.LOCATION == [[], [1, 3], [], []]
    assert context_indices(cfg.CONTEXT.LOCATION, [3, 4, 6, 3]) == [[], [1, 3], [], []]
    y.write_text("CONTEXT:\n  TYPE: gc\n  LOCATION: [[0], [], [], []]\n")
    assert load_cfg(str(y), ["CONTEXT.LOCATION", "all"]).CONTEXT.LOCATION == "all"
    assert load_cfg(str(y), ["CONTEXT.LOCATION", "[all, [0], [], []]"]).CONTEXT.LOCATION == ["all", [0], [], []]


def test_type_error_quotes_the_declared_default_not_the_yaml_value(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("DATA:\n  NUM_FRAMES: 16\n")
    with pytest.raises(ConfigError) as e:
        load_cfg(str(y), ["DATA.NUM_FRAMES", "'sixteen'"])
    assert "expected int like the default 8" in str(e.value) and "16" not in str(e.value)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_inheritance_through_fvcores_key(tmp_path):
    """_BASE_ (fvcore's key, relative to the file's folder; a list merges in order): the bases first,
    then the file's own keys; sections merge key by key; a base's OUTPUT_DIR is not inherited."""
    from fvcore.common.config import BASE_KEY

    assert BASE_KEY == "_BASE_"
    _write(tmp_path / "base" / "model.yaml", "MODEL:\n  NUM_CLASSES: 10\n  DROPOUT: 0.2\nOUTPUT_DIR: runs/base\n")
    _write(tmp_path / "base" / "data.yaml", "DATA:\n  NUM_FRAMES: 4\n")
    _write(tmp_path / "base" / "mid.yaml", "_BASE_: [model.yaml, data.yaml]\nDATA:\n  NUM_FRAMES: 6\n  SAMPLING_RATE: 2\n")
    child = _write(tmp_path / "exp" / "child.yaml", "_BASE_: ../base/mid.yaml\nMODEL:\n  DROPOUT: 0.3\n")
    cfg = load_cfg(child, ["DATA.SAMPLING_RATE", "3"], check_files=False)
    assert (cfg.MODEL.NUM_CLASSES, cfg.MODEL.DROPOUT) == (10, 0.3)  # base kept, child wins
    assert (cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE) == (6, 3)  # mid over data.yaml, command line last
    assert cfg.OUTPUT_DIR == "runs/child"  # named after the file given, not the base's folder
    assert "_BASE_" not in cfg


@pytest.mark.parametrize("case", ["bad_key", "missing", "cycle", "not_a_path"])
def test_base_errors_name_the_file(tmp_path, case):
    child = tmp_path / "child.yaml"
    if case == "bad_key":
        _write(tmp_path / "base.yaml", "MODEL:\n  NUM_CLASES: 10\n")
        _write(child, "_BASE_: base.yaml\n")
        want = rf"{tmp_path / 'base.yaml'}: unknown config key MODEL.NUM_CLASES \(did you mean MODEL.NUM_CLASSES\?\)"
    elif case == "missing":
        _write(child, "_BASE_: nope.yaml\n")
        want = rf"config file {tmp_path / 'nope.yaml'} \(the _BASE_ of {child}\) does not exist"
    elif case == "cycle":
        _write(tmp_path / "a.yaml", "_BASE_: child.yaml\n")
        _write(child, "_BASE_: a.yaml\n")
        want = r"_BASE_ makes a cycle: .*child.yaml -> .*a.yaml -> .*child.yaml"
    else:
        _write(child, "_BASE_: 3\n")
        want = r"_BASE_ = 3; expected the path of a config file"
    with pytest.raises(ConfigError, match=want):
        load_cfg(str(child), check_files=False)


@pytest.mark.parametrize("opts, env, pattern", [
    (["TRAIN.ACCUM_STEPS", "0"], {}, r"TRAIN\.ACCUM_STEPS = 0 .*a positive integer"),
    (["TRAIN.ACCUM_STEPS", "2.0"], {}, r"TRAIN\.ACCUM_STEPS = 2\.0 has type float; expected int"),
    # 64 videos / 1 process cannot make 5 equal micro-batches; 64 / 4 processes = 16 cannot make 32
    (["TRAIN.ACCUM_STEPS", "5"], {}, r"TRAIN\.ACCUM_STEPS = 5 .*a divisor of the 64 videos per process"),
    (["TRAIN.ACCUM_STEPS", "32"], {"WORLD_SIZE": "4"}, r"ACCUM_STEPS = 32 .*16 videos per process .*/ 4 process"),
])
def test_accum_steps_is_checked_against_the_batch_and_processes(opts, env, pattern, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=pattern):
        load_cfg(None, opts)


def test_accum_steps_divides_the_global_batch(monkeypatch):
    """TRAIN.BATCH_SIZE is the global batch of one optimizer step: 64 = 8 processes x 8 micro-batches
    of 1, or 1 process x 8 micro-batches of 8 (the paper's batch on one GPU); the LR stays BASE_LR's."""
    assert load_cfg(None, ["TRAIN.ACCUM_STEPS", "8"]).TRAIN.ACCUM_STEPS == 8
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert load_cfg(None, ["TRAIN.ACCUM_STEPS", "8"]).TRAIN.ACCUM_STEPS == 8
    with pytest.raises(ConfigError, match="ACCUM_STEPS = 16"):
        load_cfg(None, ["TRAIN.ACCUM_STEPS", "16"])
