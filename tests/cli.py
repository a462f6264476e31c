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
    drop_env: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """No HYDRA_FULL_ERROR: errors are seen as users see them (the entry points print full
    tracebacks of bugs themselves). stdin is closed: a command that prompts fails here.
    `drop_env` removes variables, e.g. WANDB_MODE to run with wandb's defaults."""
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **(env or {}),
    }
    for key in drop_env:
        full_env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", f"latent_diffusion.{entry}", *overrides],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
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
