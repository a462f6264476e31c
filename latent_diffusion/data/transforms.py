"""Augmentations that respect what a spectrogram's axes mean.

Rows are radial velocity (+ towards the radar at the top), columns are time.
A horizontal flip reverses time (a person sitting down becomes one standing
up) and a vertical flip swaps approaching and receding, so neither is on by
default. A circular shift in time keeps the physics of
periodic activities and is the one mild default-off augmentation we offer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Augment:
    time_shift: bool = False  # roll along time by a random offset (periodic gaits only)
    time_flip: bool = False  # reverses time: changes the class of sit/stand, fall; off by default
    doppler_flip: bool = False  # swaps towards/away: only if your data has both directions

    @property
    def enabled(self) -> bool:
        return self.time_shift or self.time_flip or self.doppler_flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (C, H=velocity, W=time)
        if self.time_shift:
            x = torch.roll(x, int(torch.randint(0, x.shape[-1], ())), dims=-1)
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
