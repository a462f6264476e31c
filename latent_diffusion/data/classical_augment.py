"""Classical spectrogram augmentations: the baseline a generator has to beat.

RadarSpecAugment ("RadarSpecAugment: a simple data augmentation method for
radar-based human activity recognition", an IEEE letter) changes three
attributes of a motion without destroying its kinematics:
  time shift             when the motion happens in the window (dynamic / static state):
                         a circular roll along the time axis; every column keeps its Doppler
  frequency disturbance  the instantaneous speed: each time column moves along the Doppler
                         axis by a small offset that varies smoothly over time
  frequency shift        the overall speed: the whole image moves along the Doppler axis
mixup (Zhang et al., ICLR 2018) blends two images and their one-hot labels with a
Beta(alpha, alpha) weight. It is a classifier option only: a blend of two classes
has no single class for a class-conditional generator or VAE to learn.

Axes (package convention): x is (..., H = radial velocity, row 0 = +v_max, W = time).
Doppler moves fill the rows they uncover with the image's noise floor (its minimum),
never wrap: a wrapped torso line would claim a velocity the person never had.
"""

from __future__ import annotations

import torch


def time_shift(
    x: torch.Tensor, max_fraction: float, g: torch.Generator | None = None
) -> torch.Tensor:
    """Circular roll along time by up to +-max_fraction of the width (one offset per call)."""
    w = x.shape[-1]
    k = int(round(max_fraction * w))
    if k <= 0:
        return x
    return torch.roll(x, int(torch.randint(-k, k + 1, (), generator=g)), dims=-1)


def _shift_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Move each time column of x (..., H, W) by rows[..., w] along H (+ = content moves down, to
    lower velocity), filling uncovered rows with the floor of the image. rows: (W,) or (B, W)
    for a batch x (B, C, H, W)."""
    h = x.shape[-2]
    if rows.dim() == 2:  # (B, W) -> (B, 1, 1, W): one offset profile per image
        rows = rows[:, None, None, :]
    src = torch.arange(h).view(h, 1) - rows  # (..., H, W): which input row lands here
    valid = (src >= 0) & (src < h)
    floor = x.amin(dim=(-2, -1), keepdim=True).expand_as(x)
    out = torch.gather(x, -2, src.clamp(0, h - 1).expand_as(x).contiguous())
    return torch.where(valid.expand_as(x), out, floor)


def frequency_shift(
    x: torch.Tensor, max_fraction: float, g: torch.Generator | None = None
) -> torch.Tensor:
    """The whole image moves by up to +-max_fraction of the height along the Doppler axis."""
    h, w = x.shape[-2], x.shape[-1]
    k = int(round(max_fraction * h))
    if k <= 0:
        return x
    return _shift_rows(
        x, torch.full((w,), int(torch.randint(-k, k + 1, (), generator=g)), dtype=torch.long)
    )


def disturbance_rows(
    h: int, w: int, max_fraction: float, g: torch.Generator | None = None, knots: int = 6
) -> torch.Tensor:
    """(W,) row offsets, linear between `knots` random values in +-max_fraction * h."""
    vals = (torch.rand(knots, generator=g) * 2 - 1) * max_fraction * h  # (knots,)
    pos = torch.linspace(0, knots - 1, w)
    lo = pos.floor().long().clamp(max=knots - 2)
    return torch.round(vals[lo] + (pos - lo) * (vals[lo + 1] - vals[lo])).long()  # (W,)


def frequency_disturbance(
    x: torch.Tensor, max_fraction: float, g: torch.Generator | None = None
) -> torch.Tensor:
    """Each column moves by a smooth random offset (at most +-max_fraction of the height): the
    instantaneous speed wanders, the time axis does not."""
    h, w = x.shape[-2], x.shape[-1]
    if max_fraction * h < 0.5:
        return x
    return _shift_rows(x, disturbance_rows(h, w, max_fraction, g))


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    alpha: float,
    g: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W), (B,) -> blended images and soft targets (B, K) (Zhang et al. 2018)."""
    onehot = torch.nn.functional.one_hot(y, num_classes).float()
    if alpha <= 0 or len(y) < 2:
        return x, onehot
    lam = _beta(alpha, g)
    perm = torch.randperm(len(y), generator=g)
    return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]


def _beta(alpha: float, g: torch.Generator | None) -> float:
    # torch's Beta takes no generator: seed numpy's from it so a seeded run stays reproducible
    import numpy as np

    seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def apply_per_image(
    x: torch.Tensor,
    time: float = 0.0,
    doppler: float = 0.0,
    disturbance: float = 0.0,
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """The three RadarSpecAugment operations, independently drawn for one image (C, H, W) or for
    each image of a batch (B, C, H, W), in one gather per axis."""
    single = x.dim() == 3
    xb = x[None] if single else x  # (B, C, H, W)
    b, h, w = xb.shape[0], xb.shape[-2], xb.shape[-1]
    if time > 0 and (kt := int(round(time * w))) > 0:
        off = torch.randint(-kt, kt + 1, (b,), generator=g)  # (B,)
        cols = (torch.arange(w).view(1, w) - off.view(b, 1)) % w  # (B, W): roll each image
        xb = torch.gather(xb, -1, cols[:, None, None, :].expand_as(xb).contiguous())
    rows = torch.zeros(b, w, dtype=torch.long)
    if disturbance > 0:
        rows += torch.stack([disturbance_rows(h, w, disturbance, g) for _ in range(b)])
    if doppler > 0 and (kd := int(round(doppler * h))) > 0:
        rows += torch.randint(-kd, kd + 1, (b, 1), generator=g)
    if rows.any():
        xb = _shift_rows(xb, rows)
    return xb[0] if single else xb
