"""`make demo` in its smoke form: `python -m latent_diffusion.demo --fast` in a fresh folder runs
the four public commands the README's headline figures come from (simulate -> train with the
VAE first -> sample -> evaluate) and leaves every artifact the demo names; about a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_demo_fast_runs_every_stage_and_writes_what_it_lists(tmp_path):
    # wandb with its own defaults (offline, no prompt): no WANDB_MODE, stdin closed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_FULL"))}
    proc = subprocess.run(
        [sys.executable, "-m", "latent_diffusion.demo", "--fast"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert [f"[{i}/4]" in out for i in range(1, 5)] == [True] * 4
    assert "training one first" in out and "Demo finished in" in out
    assert (tmp_path / "outputs/demo/data/preview.png").is_file()
    with np.load(tmp_path / "outputs/demo/samples/samples.npz") as z:
        images, labels = z["arr_0"], z["arr_1"]
    assert images.shape == (64, 64, 64, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [8] * 8  # n_per_class=8 of each of the 8 classes
    report = json.loads((tmp_path / "outputs/demo/report/metrics.json").read_text())
    assert report["generated"]["n"] == 64 and report["cas"]["n"] == 64
    assert set(report["distances"]["overall"]) == {"generated", "real_vs_real", "vae_ceiling"}
    assert (tmp_path / "outputs/demo/report/report.md").read_text().startswith("# Evaluation")
    wandb_runs = list((tmp_path / "outputs/train/demo/wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and str(wandb_runs[0].relative_to(tmp_path)) in out
