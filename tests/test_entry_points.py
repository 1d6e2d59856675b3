"""The console commands of setup.py: every entry point names the ``main`` of a tools/ script, and the
command behaves as the script (same parser; ``--help`` lists the script's arguments)."""
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_py():
    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)  # read setup()'s arguments without building
    try:
        ns = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
    return ns, captured


def test_load_tool_gives_a_fresh_module_of_the_script(load_tool):
    """The tests' one tool loader (conftest.py): tools/<name>.py as ``gcvideo.tools.<name>``, a new module
    each call (no state carried from test to test); a name with no script is refused by name."""
    a, b = load_tool("predict"), load_tool("predict")
    assert a is not b and a.main is not b.main
    assert a.__name__ == "gcvideo.tools.predict" and a.__file__ == os.path.join(ROOT, "tools", "predict.py")
    with pytest.raises(FileNotFoundError, match="no tool 'nope': .*tools/nope.py does not exist"):
        load_tool("nope")


def test_entry_points_map_to_the_tools_main_functions(load_tool):
    ns, kw = _setup_py()
    assert kw["package_dir"]["gcvideo.tools"] == "tools" and "gcvideo.tools" in kw["packages"]
    scripts = kw["entry_points"]["console_scripts"]
    assert len(scripts) == len(ns["CONSOLE_SCRIPTS"]) >= 10
    for line in scripts:
        cmd, target = (s.strip() for s in line.split("="))
        module, func = target.split(":")
        assert cmd.startswith("gcvideo-") and module.startswith("gcvideo.tools.") and func == "main", line
        path = os.path.join(ROOT, "tools", module.rsplit(".", 1)[1] + ".py")
        assert os.path.exists(path), f"{line}: no {path}"
        assert callable(load_tool(module.rsplit(".", 1)[1]).main), line
    commands = dict(s.replace(" ", "").split("=") for s in scripts)
    assert commands["gcvideo-train"] == "gcvideo.tools.train_net:main"
    assert commands["gcvideo-toy"] == "gcvideo.tools.run_toy:main"


def test_entry_point_help_is_the_scripts_help(capsys, load_tool):
    with pytest.raises(SystemExit) as e:
        load_tool("run_toy").main(["--help"])  # what `gcvideo-toy --help` runs
    assert e.value.code == 0
    via_entry_point = capsys.readouterr().out
    for arg in ("--config", "--data", "--no-attention", "KEY VALUE"):
        assert arg in via_entry_point
    # the same options as running the script
    script = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_toy.py"), "--help"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert script.returncode == 0 and script.stdout.split("options:")[1] == via_entry_point.split("options:")[1]
