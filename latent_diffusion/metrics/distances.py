"""Distribution distances in the domain feature space, at matched sample sizes.

FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) of
Gaussians fitted to the features. It is biased upwards for small n (Binkowski et
al. 2018), so a number means something only beside references computed with the
same n: every comparison here uses one real *reference* set of n images and
candidate sets of exactly n images.

KID (Binkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD^2 with the
cubic polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets
of `subset_size` = min(1000, n) (1000 is torchmetrics' default).

Precision / recall (Kynkaanniemi et al. 2019, "Improved precision and recall
metric for assessing generative models"): the real manifold is the union of
balls around each real feature with radius = distance to its k-th nearest real
neighbour (k = 3); precision = share of generated features inside it (fidelity),
recall = share of real features inside the generated manifold (coverage).

Both FID and KID go through torchmetrics with `feature=DomainFeatures(...)`:
a custom module receives the images unchanged (float, [-1, 1]).
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from latent_diffusion.metrics.features import extract_features

KID_MAX_SUBSET = 1000


def _feed(metric, x: torch.Tensor, real: bool, batch_size: int = 256) -> None:
    for i in range(0, len(x), batch_size):
        metric.update(x[i : i + batch_size], real=real)


def fid(features: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between image sets (N, C, H, W) in [-1, 1], in the feature space of `features`."""
    # The feature sums and covariances are float64 states already; set_dtype would also cast
    # the feature module to float64 and break float32 inputs.
    m = FrechetInceptionDistance(feature=features)
    _feed(m, real, True)
    _feed(m, fake, False)
    return float(m.compute())


def kid(
    features: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random subsets of min(1000, n) images."""
    n = min(len(real), len(fake))
    with (
        warnings.catch_warnings()
    ):  # "will save all extracted features": a few hundred x F floats here
        warnings.simplefilter("ignore", UserWarning)
        m = KernelInceptionDistance(
            feature=features, subsets=subsets, subset_size=min(KID_MAX_SUBSET, n)
        )
    _feed(m, real, True)
    _feed(m, fake, False)
    with torch.random.fork_rng():  # torchmetrics draws the subsets from the global generator
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)


def knn_radii(feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N,) distance from each feature to its k-th nearest neighbour in the same set (itself
    excluded)."""
    d = torch.cdist(feats.double(), feats.double())  # (N, N)
    return d.kthvalue(k + 1, dim=1).values  # k + 1: the 0 distance to itself is the first


def manifold_coverage(support: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Share of `queries` inside at least one ball (support_i, radii_i)."""
    d = torch.cdist(queries.double(), support.double())  # (Q, S)
    return float((d <= radii[None, :]).any(dim=1).double().mean())


def precision_recall(
    real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 improved precision and recall with k-NN manifolds."""
    precision = manifold_coverage(real_feats, knn_radii(real_feats, k), fake_feats)
    recall = manifold_coverage(fake_feats, knn_radii(fake_feats, k), real_feats)
    return precision, recall


def compare(
    features: torch.nn.Module,
    reference: torch.Tensor,
    candidate: torch.Tensor,
    k: int = 3,
    kid_subsets: int = 50,
    seed: int = 0,
) -> dict:
    """All distances between one reference set and one candidate set of the same size."""
    if len(reference) != len(candidate):
        raise ValueError(
            f"sizes differ ({len(reference)} vs {len(candidate)}): distances need matched sizes"
        )
    kid_mean, kid_std = kid(features, reference, candidate, kid_subsets, seed)
    p, r = precision_recall(
        extract_features(features, reference), extract_features(features, candidate), k
    )
    return {
        "fid": fid(features, reference, candidate),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": p,
        "recall": r,
        "n": len(candidate),
    }
