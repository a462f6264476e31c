import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """One folder for the end-to-end tests: they share its .cache (simulated splits,
    the VAE trained once), as runs on a user's machine do."""
    return tmp_path_factory.mktemp("work")
