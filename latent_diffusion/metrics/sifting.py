"""Sifting generated spectrograms before they augment a classifier.

After Erol, Gurbuz & Amin ("Motion classification using kinematically sifted
ACGAN-synthesized radar micro-Doppler signatures", IEEE TAES 2020): a synthetic
sample whose kinematics no real sample of its class shows is more likely to teach
the classifier something false than something new. Two tests, each optional:

  kinematics   every finite kinematic statistic (kinematics.py: envelope extremes,
               torso velocity, bandwidth, cadence) lies within the real class's
               [min, max] over its training images, widened by `margin` x that range
  confidence   the real-trained domain classifier gives the sample's own class a
               probability of at least `min_confidence`

The per-class counts say what was dropped and why, so a user sees when sifting
empties a class (a generator that misses the class, not a strict sifter).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from latent_diffusion.metrics.kinematics import STATS, kinematic_stats

log = logging.getLogger(__name__)


def class_ranges(stats: dict, y: np.ndarray, k: int, margin: float) -> dict:
    """{stat: (K, 2) [lo, hi]} over the finite values of each class, widened by margin x (hi -
    lo)."""
    out = {}
    for s in STATS:
        r = np.full((k, 2), np.nan)
        for c in range(k):
            v = stats[s][(y == c) & np.isfinite(stats[s])]
            if len(v):
                lo, hi = float(v.min()), float(v.max())
                r[c] = (lo - margin * (hi - lo), hi + margin * (hi - lo))
        out[s] = r
    return out


@torch.no_grad()
def own_class_confidence(
    model, x: torch.Tensor, y: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """(N,) softmax probability the classifier gives each image's own class."""
    model.eval()
    p = torch.cat(
        [model(x[i : i + batch_size].float()).softmax(1) for i in range(0, len(x), batch_size)]
    )
    return p[torch.arange(len(y)), torch.as_tensor(y)].numpy()


def sift(
    gen_x: torch.Tensor,
    gen_y,
    real_x: torch.Tensor,
    real_y,
    class_names,
    kin_params: dict,
    model=None,
    kinematics: bool = True,
    margin: float = 0.1,
    min_confidence: float | None = 0.5,
):
    """-> (keep (N,) bool, report {"per_class": {c: {n, dropped_kinematics, dropped_confidence,
    kept}},
    "settings"}). A sample failing both tests counts under kinematics."""
    gen_y, real_y = np.asarray(gen_y), np.asarray(real_y)
    k = len(class_names)
    keep = np.ones(len(gen_y), bool)
    bad_kin = np.zeros(len(gen_y), bool)
    if kinematics:
        ranges = class_ranges(kinematic_stats(real_x.numpy(), **kin_params), real_y, k, margin)
        gs = kinematic_stats(gen_x.numpy(), **kin_params)
        for s in STATS:
            lo, hi = ranges[s][gen_y, 0], ranges[s][gen_y, 1]
            v = gs[s]
            checked = np.isfinite(v) & np.isfinite(lo)  # a statistic that does not apply is no test
            bad_kin |= checked & ((v < lo) | (v > hi))
    bad_conf = np.zeros(len(gen_y), bool)
    if model is not None and min_confidence is not None:
        bad_conf = own_class_confidence(model, gen_x, gen_y) < float(min_confidence)
    keep = ~(bad_kin | bad_conf)
    per = {}
    for c, name in enumerate(class_names):
        m = gen_y == c
        per[name] = {
            "n": int(m.sum()),
            "dropped_kinematics": int((m & bad_kin).sum()),
            "dropped_confidence": int((m & bad_conf & ~bad_kin).sum()),
            "kept": int((m & keep).sum()),
        }
        if per[name]["n"] and not per[name]["kept"]:
            log.warning(
                "sifting dropped every generated '%s' image (%d): the generator does not produce "
                "this "
                "class plausibly",
                name,
                per[name]["n"],
            )
    log.info(
        "sifting kept %d of %d generated images: %s",
        int(keep.sum()),
        len(keep),
        ", ".join(f"{c} {v['kept']}/{v['n']}" for c, v in per.items()),
    )
    return keep, {
        "per_class": per,
        "kept": int(keep.sum()),
        "n": len(keep),
        "settings": {"kinematics": kinematics, "margin": margin, "min_confidence": min_confidence},
    }
