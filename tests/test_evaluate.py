"""`python -m latent_diffusion.evaluate` end to end, as a user runs it: simulate a "generated" set
with another seed, evaluate it against the simulator, read metrics.json and report.md."""

from __future__ import annotations

import json

import pytest
import torch
from cli import run_cli

CLASSES = "[walk,run,fall,box]"
# Same real set as tests/test_metrics.py, so the two share the simulator cache in `workdir`.
REAL = [
    f"real.classes={CLASSES}",
    "real.n_per_class=30",
    "real.val_per_class=5",
    "real.test_per_class=30",
]
FAST = [
    "num_threads=1",
    "classifier.width=8",
    "classifier.steps=150",
    "classifier.batch_size=32",
    "protocol.steps=40",
    "augmentation.fractions=[0.25]",
    "augmentation.multipliers=[0,1]",
    "augmentation.seeds=[0]",
    "distances.kid_subsets=10",
    "min_samples=40",
]


def _tiny_vae(folder):
    """A randomly initialised 1-channel f4 AutoencoderKL: a (bad) VAE for the ceiling reference."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    ).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_evaluate_cli_on_simulated_samples(workdir):
    gen = workdir / "eval_gen"
    run_cli(
        "simulate",
        f"out_dir={gen}",
        "n_per_class=15",
        "seed=7",
        f"classes={CLASSES}",
        "workers=0",
        cwd=workdir,
    )
    vae = _tiny_vae(workdir / "eval_vae")
    out = workdir / "eval_out"
    run_cli(
        "evaluate",
        f"generated={gen}",
        f"out_dir={out}",
        f"vae_path={vae}",
        *REAL,
        *FAST,
        cwd=workdir,
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["generated"]["n"] == 60 and m["classes"] == ["walk", "run", "fall", "box"]
    # fresh simulator draws are "perfect samples": CAS ~ TRTR, TSTR ~ TRTR at the same budget
    assert m["trtr"]["accuracy"] > 0.85
    assert m["cas"]["ratio_to_trtr"] > 0.85
    assert abs(m["tstr"]["accuracy"] - m["tstr"]["trtr_same_budget"]) < 0.2
    d = m["distances"]["overall"]
    assert d["generated"]["n"] == d["real_vs_real"]["n"] == d["vae_ceiling"]["n"] == 60
    # generated ~ real-vs-real, and a random VAE is far worse than both
    assert d["generated"]["fid"] < 3 * d["real_vs_real"]["fid"] + 0.5
    assert d["vae_ceiling"]["fid"] > 5 * d["generated"]["fid"]
    assert (
        d["generated"]["precision"] > 0.5
        and d["vae_ceiling"]["precision"] < d["generated"]["precision"]
    )
    mem = m["memorisation"]["pixel"]
    assert 0.75 < mem["ratio"] < 1.33 and mem["frac_copies"] < 0.1
    walk = m["kinematics"]["per_class"]["walk"]["bandwidth"]
    assert walk["w1"] < 0.5 and 1.5 < walk["real_mean"] < 4.5  # m/s: feet swing ~2-3x torso speed
    assert set(m["augmentation"]["0.25"]["accuracy"]) == {"0", "1"}
    report = (out / "report.md").read_text()
    assert "| CAS (generated) |" in report and "VAE ceiling" in report and "| walk |" in report
    for png in (
        "augmentation_curve.png",
        "confusion_cas.png",
        "kinematics.png",
        "samples_real_vs_generated.png",
    ):
        assert (out / png).stat().st_size > 1000, png

    # a generated folder whose classes are not in the real data: one clear line, exit code 2
    proc = run_cli(
        "evaluate",
        f"generated={gen}",
        f"out_dir={workdir / 'eval_bad'}",
        "real.classes=[walk,run]",
        *REAL[1:],
        *FAST,
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 2
    assert "['fall', 'box']" in proc.stderr or "not in the real data" in proc.stderr, proc.stderr[
        -2000:
    ]


@pytest.mark.slow
def test_evaluate_cli_too_few_samples_suggests_a_count(workdir, tmp_path):
    gen = tmp_path / "few"
    run_cli(
        "simulate",
        f"out_dir={gen}",
        "n_per_class=2",
        f"classes={CLASSES}",
        "workers=0",
        cwd=workdir,
    )
    proc = run_cli(
        "evaluate",
        f"generated={gen}",
        f"out_dir={tmp_path / 'o'}",
        *REAL,
        *FAST,
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 2
    assert "holds 8 images" in proc.stderr and "n_per_class >= 10" in proc.stderr, proc.stderr[
        -2000:
    ]
