"""The VAE ceiling in the domain feature space, reported by train_vae.

No denoiser can produce better images than the VAE decodes, so the domain FID of
the VAE's own reconstructions of held-out real spectrograms (against the real
training split) is the floor under every generated FID, and the FID of the
held-out originals themselves (real vs real, same n) is the floor under that.
Both come from `evaluate`'s domain classifier (the same config, read from
conf/evaluate.yaml, and the same cache, so `evaluate` reuses the classifier this
trains) at matched sample sizes, overall and per class; the ratio ceiling /
real-vs-real says how much room the VAE leaves.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from latent_diffusion.metrics import distances
from latent_diffusion.metrics.classifier import ClassifierConfig, load_or_train_domain_classifier
from latent_diffusion.metrics.features import DomainFeatures
from latent_diffusion.metrics.suite import stack_split, vae_roundtrip

log = logging.getLogger(__name__)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


def vae_ceiling_fid(
    vae,
    datamodule,
    classifier_cfg: dict | None,
    cache_dir=None,
    seed: int = 0,
    min_per_class: int = 10,
) -> dict:
    """{"overall": {real_vs_real, vae_ceiling, ratio, n}, "per_class": {name: {...}},
    "domain_classifier": {test_accuracy, key}}: FIDs in the domain classifier's features."""
    src, names = datamodule.source, list(datamodule.class_names)
    train, val, test = (stack_split(src.split(s)) for s in ("train", "val", "test"))
    if len(test[1]) == 0 or len(val[1]) == 0:
        return {"skipped": "the data has no val or test split to hold out"}
    model, meta = load_or_train_domain_classifier(
        train, test, names, datamodule.fingerprint(), ClassifierConfig.make(classifier_cfg),
        cache_dir,
    )  # fmt: skip
    feats = DomainFeatures(model)
    held_x, held_y = torch.cat([val[0], test[0]]), torch.cat([val[1], test[1]])
    with torch.no_grad():  # not around the classifier above: it may have to be trained
        recon = vae_roundtrip(vae, held_x.to(vae.device)).cpu()  # (N, C, H, W), 8-bit like the data
    rng = np.random.default_rng(seed)

    def pair(ti, hi) -> dict:
        rr = distances.fid(feats, train[0][ti], held_x[hi])
        ceil = distances.fid(feats, train[0][ti], recon[hi])
        return {"n": len(hi), "real_vs_real": round(rr, 3), "vae_ceiling": round(ceil, 3),
                "ratio": _ratio(ceil, rr)}  # fmt: skip

    n = min(len(train[1]), len(held_y))
    out = {"overall": pair(rng.permutation(len(train[1]))[:n], rng.permutation(len(held_y))[:n])}
    per = {}
    for ci, name in enumerate(names):
        ti, hi = (np.flatnonzero(y.numpy() == ci) for y in (train[1], held_y))
        nc = min(len(ti), len(hi))
        per[name] = (
            pair(rng.permutation(ti)[:nc], rng.permutation(hi)[:nc])
            if nc >= min_per_class
            else {"n": nc}
        )
    out["per_class"] = per
    out["domain_classifier"] = {"test_accuracy": meta["test_accuracy"], "key": meta["key"]}
    log.info(
        "VAE ceiling: domain FID %.2f against real vs real %.2f (%.1fx, n = %d)",
        out["overall"]["vae_ceiling"], out["overall"]["real_vs_real"], out["overall"]["ratio"], n,
    )  # fmt: skip
    return out


__all__ = ["vae_ceiling_fid"]
