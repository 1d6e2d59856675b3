import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Under pytest-xdist each worker gets one thread, so workers don't fight over the 2 cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _same_rng_for_every_test():
    """Each test starts from the same torch RNG state, whichever tests ran before it on its
    pytest-xdist worker (unseeded random inputs made results depend on the test order)."""
    torch.manual_seed(0)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


def _load_tool(name):
    """tools/<name>.py as a fresh module (``gcvideo.tools.<name>``: its ``main`` is what the
    ``gcvideo-...`` command runs), loaded in this process: a subprocess per call would re-import torch."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tool {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"gcvideo.tools.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def load_tool():
    """``load_tool(name)``: tools/<name>.py as a fresh module (``_load_tool``)."""
    return _load_tool
