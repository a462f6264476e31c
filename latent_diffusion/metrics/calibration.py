"""Calibration of the hard simulator preset (data/scene.py): the domain classifier's real
test accuracy at the default training size, the number docs/evaluation.md records."""

from __future__ import annotations

import time

from latent_diffusion.data.simulator import MicroDopplerSource
from latent_diffusion.metrics.classifier import ClassifierConfig, predict, train_classifier
from latent_diffusion.metrics.protocol import classification_report
from latent_diffusion.metrics.suite import stack_split


def calibrate(
    n_per_class: int = 200,
    test_per_class: int = 50,
    seed: int = 0,
    scene: dict | None = None,
    cache_dir: str | None = None,
    steps: int = 400,
    width: int = 24,
) -> dict:
    """The domain classifier's real test accuracy on the hard preset, with evaluate's default
    classifier (conf/evaluate.yaml: width 24, 400 steps): the number the preset is calibrated on."""
    t0 = time.time()
    src = MicroDopplerSource(
        n_per_class=n_per_class,
        test_per_class=test_per_class,
        seed=seed,
        preset="hard",
        scene=scene,
        cache_dir=cache_dir,
    )
    (tx, ty), (sx, sy) = stack_split(src.split("train")), stack_split(src.split("test"))
    t1 = time.time()
    model = train_classifier(
        tx, ty, len(src.class_names), ClassifierConfig(width=width, steps=steps, batch_size=64)
    )
    pred = predict(model, sx)
    rep = classification_report(sy.numpy(), pred, src.class_names)
    return {
        "accuracy": rep["accuracy"],
        "per_class": {c: round(v["accuracy"], 3) for c, v in rep["per_class"].items()},
        "n_train": len(ty),
        "n_test": len(sy),
        "simulate_s": round(t1 - t0),
        "train_s": round(time.time() - t1),
    }


if __name__ == "__main__":
    # python -m latent_diffusion.metrics.calibration [n_per_class] [seed]: the calibration in
    # docs/evaluation.md
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    s = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    print(json.dumps(calibrate(n, seed=s, cache_dir=".cache/latent_diffusion/simulator"), indent=1))
