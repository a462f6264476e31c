"""Memorisation: is a generated image closer to a training image than new real data is?

A diffusion model trained on a few hundred spectrograms can reproduce them
(Carlini et al. 2023, "Extracting training data from diffusion models";
Somepalli et al. 2023). For each generated image we take the distance to its
nearest training image, and compare with the same distance for held-out real
images, which are new draws from the data distribution and so calibrate what
"close" means:

    ratio          median NN distance (generated -> train) / median (real test -> train)
                   ~1: as novel as fresh data; -> 0: copies of training images
    frac_copies    share of generated images closer to the training set than the
                   1st percentile of the real test NN distances

in pixel space (L2 over [-1, 1] pixels) and in the domain feature space.
"""

from __future__ import annotations

import numpy as np
import torch


def nn_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 512) -> np.ndarray:
    """(Q,) Euclidean distance from each row of `queries` (Q, ...) to its nearest row of `bank` (M,
    ...)."""
    q, b = queries.flatten(1).double(), bank.flatten(1).double()
    out = [torch.cdist(q[i : i + chunk], b).min(dim=1).values for i in range(0, len(q), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def memorisation_score(gen: torch.Tensor, real_test: torch.Tensor, train: torch.Tensor) -> dict:
    """NN statistics of generated vs held-out real against the training set (one space)."""
    d_gen, d_real = nn_distances(gen, train), nn_distances(real_test, train)
    p1 = float(np.percentile(d_real, 1))
    return {
        "gen_nn_median": float(np.median(d_gen)),
        "real_nn_median": float(np.median(d_real)),
        "ratio": float(np.median(d_gen) / max(np.median(d_real), 1e-12)),
        "real_nn_p1": p1,
        "frac_copies": float((d_gen < p1).mean()),
        "n_gen": len(d_gen),
        "n_real": len(d_real),
        "n_train": len(train),
    }


def memorisation(gen_x, test_x, train_x, gen_f=None, test_f=None, train_f=None) -> dict:
    """{"pixel": ..., "feature": ...}; features are optional (N, F) tensors."""
    out = {"pixel": memorisation_score(gen_x, test_x, train_x)}
    if gen_f is not None:
        out["feature"] = memorisation_score(gen_f, test_f, train_f)
    return out
