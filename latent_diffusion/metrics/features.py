"""The domain feature space: the classifier's penultimate layer as a frozen extractor.

Inception-v3 features (Heusel et al. 2017) cannot be downloaded here and were
learned on photographs; a classifier trained on real spectrograms measures the
differences that matter for the task. torchmetrics'
FrechetInceptionDistance / KernelInceptionDistance accept any nn.Module with an
integer `num_features` and, for a custom module, pass the images through
untouched (no uint8 conversion, no resize): so this module takes the package's
float pixels (B, C, H, W) in [-1, 1] directly. uint8 images (0..255) are
accepted too and mapped to the same scale.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class DomainFeatures(nn.Module):
    """images (B, C, H, W) -> features (B, num_features); frozen, always in eval mode."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = copy.deepcopy(classifier).eval().requires_grad_(False)
        self.num_features = int(self.classifier.num_features)  # read by torchmetrics

    def train(self, mode: bool = True):  # BatchNorm / dropout stay frozen whatever the caller does
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.dtype == torch.uint8:
            imgs = imgs.float() / 127.5 - 1.0  # (B, C, H, W) in [-1, 1]
        return self.classifier.features(imgs.float())  # (B, F)


@torch.no_grad()
def extract_features(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) -> (N, F) float32, in batches."""
    out = [module(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).float() if out else torch.zeros(0, getattr(module, "num_features", 0))
