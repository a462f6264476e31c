"""`make demo`: simulate -> VAE -> latent diffusion -> sample -> evaluate, on the CPU.

Each stage is the public command a user would type (so the demo exercises the
documented interface, not internals), run one after the other with its own
progress display. Outputs go under outputs/; the final lines say where.

    python -m latent_diffusion.demo [--fast]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

RUN = Path("outputs/train/demo")
SAMPLES = Path("outputs/demo/samples")
REPORT = Path("outputs/demo/report")


def stages(fast: bool) -> list[tuple[str, list[str]]]:
    train = ["experiment=demo", "ckpt_path=last"]
    sample = [
        f"run={RUN}",
        "sampler=dpmpp",
        "steps=20",
        "guidance=3.0",
        "n_per_class=32",
        f"out_dir={SAMPLES}",
    ]
    evaluate = [
        "real=microdoppler",
        f"generated={SAMPLES}",
        f"out_dir={REPORT}",
        f"run={RUN}",
        "augmentation.fractions=[0.25,1.0]",
        "augmentation.multipliers=[0,1]",
        "augmentation.seeds=[0]",
    ]
    if fast:  # a smoke run of the same pipeline (tests)
        train += ["debug=fast", "trainer.max_steps=20", "trainer.val_check_interval=10"]
        sample[-2] = "n_per_class=8"
        evaluate += [  # the real data debug=fast trained on: the generator's own subset
            "real.n_per_class=8",
            "real.val_per_class=2",
            "real.test_per_class=2",
            "classifier.steps=20",
            "protocol.steps=20",
            "min_samples=8",
        ]
    return [
        (
            "simulate a preview of the data",
            ["simulate", "out_dir=outputs/demo/data", "n_per_class=8"],
        ),
        ("train the VAE (first run only) and the latent diffusion model", ["train", *train]),
        (
            "sample 32 spectrograms per class (DPM-Solver++, 20 steps, guidance 3)",
            ["sample", *sample],
        ),
        ("evaluate against held-out simulated data", ["evaluate", *evaluate]),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="a few steps of each stage (smoke test)")
    args = ap.parse_args(argv)
    t_all = time.time()
    for i, (what, (entry, *overrides)) in enumerate(stages(args.fast), 1):
        cmd = [sys.executable, "-m", f"latent_diffusion.{entry}", *overrides]
        print(
            f"\n=== [{i}/4] {what}\n    $ python -m latent_diffusion.{entry} {' '.join(overrides)}",
            flush=True,
        )
        t0 = time.time()
        if entry == "simulate" and Path("outputs/demo/data/metadata.json").exists():
            print("    (already there)")
            continue
        rc = subprocess.call(cmd)
        if rc != 0:
            print(
                f"\ndemo: stage {i} ({entry}) failed with exit code {rc}; see the messages above.",
                file=sys.stderr,
            )
            return rc
        print(f"    done in {time.time() - t0:.0f} s", flush=True)
    wandb_runs = sorted(RUN.glob("wandb/offline-run-*"))
    print(f"\nDemo finished in {(time.time() - t_all) / 60:.1f} min.")
    print("  data preview      outputs/demo/data/preview.png")
    print(f"  training grids    {RUN}/samples/")
    print(f"  samples           {SAMPLES}/grid.png  ({SAMPLES}/<class>/*.png, samples.npz)")
    print(f"  metrics report    {REPORT}/report.md  ({REPORT}/metrics.json)")
    if wandb_runs:
        print(f"  wandb (offline)   {wandb_runs[-1]}   upload: wandb sync {wandb_runs[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
