"""The pieces every benchmark part times: a frozen VAE, denoisers, the LightningModule, batches.

Timings do not depend on trained weights, so by default the VAE is a freshly
initialised AutoencoderKL with the architecture of conf/vae/f4.yaml (its
latent stats are the config fallback, which changes no cost); `vae_path=DIR`
times a trained one instead.

Pixel-space baseline ("same UNet family"): the f-times down-sampling VAE
replaces log2(f) halvings, so the pixel UNet is the latent UNet with log2(f)
extra levels in FRONT at the first level's width: model=small (16 -> 8 -> 4,
widths 64/128/128, attention at 8 and 4) becomes on 64x64 pixels
64 -> 32 -> 16 -> 8 -> 4 with widths 64/64/64/128/128 and the same attention.
The levels the two share are identical; the pixel model only adds the
cheapest levels it could have, so latent/pixel is a lower bound on the gain.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from latent_diffusion.data.simulator import CLASSES, RadarConfig, generate
from latent_diffusion.diffusion import create_diffusion
from latent_diffusion.models import MODELS, create_model

NUM_CLASSES = len(CLASSES)


def make_vae(arch: dict, vae_path: str | None, device: torch.device, image_size: int = 64):
    """FrozenVAE: a trained one from `vae_path`, else a fresh AutoencoderKL of `arch`."""
    from latent_diffusion.vae.interface import FrozenVAE
    from latent_diffusion.vae.module import build_autoencoder
    from latent_diffusion.vae.stats import fallback_stats

    if vae_path:
        return FrozenVAE.load(Path(vae_path), data_channels=1, device=device)
    torch.manual_seed(0)
    model = build_autoencoder(in_channels=1, sample_size=image_size, **arch)
    stats = fallback_stats(
        model.config.scaling_factor, None, int(model.config.latent_channels), "untrained"
    )
    return FrozenVAE(model, stats, data_channels=1, weights_hash="untrained").to(device)


def pixel_channel_mult(size: str, downsample_factor: int) -> list[int]:
    """The latent model's channel_mult with log2(f) leading levels at its first width."""
    mult = list(MODELS[size]["channel_mult"])
    return [mult[0]] * int(round(math.log2(downsample_factor))) + mult


def make_denoiser(
    size: str, shape: tuple[int, int, int], channel_mult=None, channels_last=False, **overrides
):
    """`overrides`: model keys an experiment sets (e.g. attention_resolutions)."""
    extra = {"channel_mult": channel_mult} if channel_mult is not None else {}
    extra.update(overrides)
    if channels_last:
        extra["channels_last"] = True
    torch.manual_seed(0)
    return create_model(
        size,
        in_channels=shape[0],
        num_classes=NUM_CLASSES,
        sample_size=shape[1],
        learn_sigma=True,
        **extra,
    )


def make_module(denoiser, latent_shape, vae=None, compile: bool = False, fused: bool = False):
    """Our LatentDiffusion LightningModule around `denoiser`: default diffusion config, AdamW
    as conf/train.yaml (fused: the CUDA kernel), its own LR warm-up."""
    from latent_diffusion.lit.module import LatentDiffusion

    if compile:
        denoiser = torch.compile(denoiser)
    kw = {"fused": True} if fused else {}
    return LatentDiffusion(
        denoiser=denoiser,
        diffusion=create_diffusion(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-4, **kw),
        class_names=list(CLASSES),
        latent_shape=latent_shape,
        vae=vae,
        warmup_steps=200,
    )


def simulated_pixels(
    n: int, image_size: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n simulator spectrograms (n, 1, H, W) in [-1, 1] and labels (n,), classes in turn."""
    per_class = max(1, math.ceil(n / NUM_CLASSES))
    pix, labels, _ = generate(list(CLASSES), per_class, "train", seed, image_size, RadarConfig(), 0)
    order = np.argsort(np.arange(len(labels)) % per_class, kind="stable")[:n]  # interleave classes
    x = torch.from_numpy(pix[order].astype(np.float32) / 65535.0)[:, None] * 2 - 1
    return x, torch.from_numpy(labels[order])


def pixel_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> dict:
    """A batch of `batch_size` from the pool (tiled when the pool is smaller), on `device`."""
    idx = torch.arange(batch_size) % x.shape[0]
    return {"x": x[idx].to(device), "y": y[idx].to(device)}


def cached_batch(vae, batch: dict) -> dict:
    """What data.latents=cached serves: the scaled posterior mean and std of each image."""
    mean, std = vae.encode_posterior(batch["x"])  # (B, c, h, w) each
    return {"mean": mean, "std": std, "y": batch["y"]}
