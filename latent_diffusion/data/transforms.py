"""Augmentations that respect what a spectrogram's axes mean.

Rows are radial velocity (+ towards the radar at the top), columns are time.
A horizontal flip reverses time (a person sitting down becomes one standing
up) and a vertical flip swaps approaching and receding, so neither is on by
default. A circular shift in time keeps the physics of
periodic activities and is the one mild default-off augmentation we offer.
The RadarSpecAugment operations (classical_augment.py) are here too, off by
default: doppler_shift (overall speed) and frequency_disturbance (instantaneous
speed), each as the largest move in a fraction of the image height.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latent_diffusion.data import classical_augment as ca
from latent_diffusion.utils.errors import UserError


@dataclass
class Augment:
    time_shift: bool | float = False  # roll along time: true = any offset, a number = up to that
    #                                   fraction of the width either way (periodic gaits only)
    time_flip: bool = False  # reverses time: changes the class of sit/stand, fall; off by default
    doppler_flip: bool = False  # swaps towards/away: only if your data has both directions
    doppler_shift: float = (
        0.0  # RadarSpecAugment frequency shift: up to this fraction of the height
    )
    frequency_disturbance: float = 0.0  # RadarSpecAugment: a smooth per-column Doppler wander
    mixup: float = 0.0  # not here: a blend of two classes has no class to condition a generator on

    def __post_init__(self):
        if self.mixup:
            raise UserError(
                "data.augment.mixup: mixup blends two classes, so a class-conditional generator "
                "or VAE has no label to learn; it is a classifier option (evaluate "
                "protocol.augment.mixup=ALPHA)"
            )
        for key in ("doppler_shift", "frequency_disturbance"):
            v = float(getattr(self, key))
            if not 0.0 <= v < 0.5:
                raise UserError(
                    f"data.augment.{key}={v} must be in [0, 0.5): a fraction of the image height"
                )

    @property
    def enabled(self) -> bool:
        return bool(
            self.time_shift
            or self.time_flip
            or self.doppler_flip
            or self.doppler_shift
            or self.frequency_disturbance
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (C, H=velocity, W=time)
        if self.time_shift is True:
            x = torch.roll(x, int(torch.randint(0, x.shape[-1], ())), dims=-1)
        elif self.time_shift:
            x = ca.time_shift(x, float(self.time_shift))
        if self.frequency_disturbance or self.doppler_shift:
            x = ca.apply_per_image(
                x, doppler=float(self.doppler_shift), disturbance=float(self.frequency_disturbance)
            )
        if self.time_flip and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-1])
        if self.doppler_flip and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-2])
        return x


class AugmentedDataset(torch.utils.data.Dataset):
    def __init__(self, base, augment: Augment):
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.augment(x), y
