import os
import sys
from pathlib import Path

# One compute thread per test process, and for the commands the tests start (they inherit
# the environment). `make test` runs two pytest-xdist workers on a 2-core machine, and a
# worker spinning two OpenMP threads beside a busy one slows tiny models several-fold
# (measured: the distillation toy fit took 30 s alone and 139 s that way). The variables are
# set before torch loads.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """One folder for the end-to-end tests: they share its .cache (simulated splits,
    the VAE trained once), as runs on a user's machine do."""
    return tmp_path_factory.mktemp("work")
