"""Run the package's entry points as a user would: `python -m latent_diffusion.<name> ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    entry: str,
    *overrides: str,
    cwd: Path,
    check: bool = True,
    env: dict | None = None,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", f"latent_diffusion.{entry}", *overrides],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{entry} {' '.join(overrides)} exited {proc.returncode}\n--- stderr "
            f"---\n{proc.stderr[-6000:]}"
        )
    return proc
