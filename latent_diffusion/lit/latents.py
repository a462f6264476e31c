"""Batches -> the unit-variance latents a diffusion model (or a noisy classifier) sees.

Batches are pixels ({"x", "y"}: encoded by the frozen VAE on the fly, or used as
they are for a pixel-space baseline) or cached posteriors ({"mean", "std", "y"}: a
fresh latent is drawn every time, so the cache does not freeze the VAE's noise).
"""

from __future__ import annotations

import torch


def latents_from_batch(
    batch: dict, vae=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unit-variance latents z (B, c, h, w), or the pixels themselves without a VAE."""
    if "mean" in batch:  # cached posterior: a fresh reparameterised draw every step
        mean, std = batch["mean"], batch["std"]  # (B, c, h, w) each, already scaled
        eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        return mean + std * eps
    x = batch["x"]  # (B, C, H, W) in [-1, 1]
    if vae is None:
        return x
    if vae.device != x.device:
        vae.to(x.device)
    with torch.no_grad():
        return vae.encode(x, sample=True, generator=generator)  # (B, c, h, w), (z - shift) * scale
