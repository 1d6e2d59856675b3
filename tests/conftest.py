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
