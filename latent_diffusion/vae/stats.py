"""Latent statistics: the shift and scale that make the denoiser's latents unit Gaussians.

The denoiser is trained on z' = (z - shift) * scale (Rombach et al. 2022). LDM's
`scale_by_std` takes scale = 1 / std(z) from ONE batch on rank 0 and Stable
Diffusion hard-codes 0.18215 for ITS VAE; neither holds for a VAE trained on
spectrograms, whose channels have means from about -3 to +2 and stds from 0.9
to 2. So we measure, per latent channel by default, over >= 2000 training
latents.

Which latents: POSTERIOR SAMPLES z = mu + sigma * eps, not the means. The
denoiser is trained on fresh samples (the latent cache stores (mu, sigma) and
draws every step), so unit variance must hold for samples:
Var(z) = Var(mu) + E[sigma^2]. Measuring the means alone would underestimate
the variance whenever sigma is not negligible (e.g. Stable Diffusion's VAE) and
leave the denoiser's inputs with variance > 1. A split smaller than
`min_latents` images is cycled with fresh draws, as training would.

A stats file belongs to one VAE (sha256 of its weights file) and one data set
(the DataModule fingerprint). `stats_valid` is the single check every reader
uses: stats of other weights are recomputed, never reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latent_diffusion.utils.io import atomic_write_json, file_hash, stable_hash

log = logging.getLogger(__name__)

STATS_FILE = "latent_stats.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
STATS_VERSION = 1


@dataclass
class LatentStats:
    shift: list[float]  # per latent channel (length C), or length 1 when global
    scale: list[float]  # 1 / std, same length as shift
    per_channel: bool = True
    n_latents: int = 0  # posterior samples the numbers were measured on
    vae_hash: str = ""  # sha256 (16 hex) of the VAE weights file
    data_hash: str | None = None  # stable_hash of the data fingerprint, None = unknown data
    data_fingerprint: dict | None = None
    method: str = "posterior samples z = mu + sigma * eps"
    source: str = "measured"  # "measured" | "config scaling_factor (fallback)"
    version: int = STATS_VERSION
    extra: dict = field(default_factory=dict)  # raw per-channel mean/std, for the record

    def tensors(self, channels: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) as (1, C, 1, 1) float32, a global pair broadcast to every channel."""
        shift = torch.tensor(self.shift, dtype=torch.float32, device=device)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=device)
        if shift.numel() == 1:
            shift, scale = shift.expand(channels), scale.expand(channels)
        if shift.numel() != channels:
            raise ValueError(f"latent stats have {shift.numel()} channels, the VAE has {channels}")
        return shift.view(1, -1, 1, 1).clone(), scale.view(1, -1, 1, 1).clone()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> LatentStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


# ------------------------------------------------------------------ identity


def weights_file(folder: str | os.PathLike) -> Path | None:
    """The diffusers weights file of a save_pretrained folder, or None."""
    for name in WEIGHT_FILES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


def vae_weights_hash(folder: str | os.PathLike) -> str:
    path = weights_file(folder)
    if path is None:
        raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")
    return file_hash(path)


def data_hash(fingerprint: dict | None) -> str | None:
    return None if fingerprint is None else stable_hash(fingerprint)


def stats_valid(
    stats: LatentStats | None,
    vae_hash: str,
    data_fp_hash: str | None,
    per_channel: bool,
) -> tuple[bool, str]:
    """(ok, why not). Data is checked only when both sides know theirs."""
    if stats is None:
        return False, "no stats"
    if stats.version != STATS_VERSION:
        return False, f"stats version {stats.version} != {STATS_VERSION}"
    if stats.vae_hash != vae_hash:
        return False, f"they belong to other VAE weights (hash {stats.vae_hash} != {vae_hash})"
    if stats.per_channel != per_channel:
        return (
            False,
            f"they are {'per-channel' if stats.per_channel else 'global'}, not as configured",
        )
    if stats.source != "measured":
        return False, "they are a scaling_factor fallback, not measured"
    if data_fp_hash is not None and stats.data_hash is not None and stats.data_hash != data_fp_hash:
        return (
            False,
            f"they were measured on other data (data hash {stats.data_hash} != {data_fp_hash})",
        )
    return True, ""


# ------------------------------------------------------------------ files


def save_latent_stats(path: str | os.PathLike, stats: LatentStats) -> Path:
    return atomic_write_json(path, stats.to_json())


def load_latent_stats(path: str | os.PathLike) -> LatentStats | None:
    """Stats from a JSON file; None if it is missing or unreadable (it is then recomputed)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return LatentStats.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        log.warning("ignoring unreadable latent stats %s (%s); they will be recomputed", path, err)
        return None


# ------------------------------------------------------------------ measurement


def batch_images(batch) -> torch.Tensor:
    """Pixels of a DataModule batch: {"x", "y"} dict, (x, y) tuple or a bare tensor."""
    if isinstance(batch, dict):
        return batch["x"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


@torch.no_grad()
def measure_latent_stats(
    posterior: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batches: Callable[[], Iterable],
    *,
    per_channel: bool = True,
    min_latents: int = 2000,
    device=None,
    vae_hash: str = "",
    data_fingerprint: dict | None = None,
    seed: int = 0,
) -> LatentStats:
    """Shift and scale of posterior samples of >= min_latents training images.

    posterior(x) -> raw (mu, sigma), each (B, C, h, w); batches() -> a fresh
    iterable of training batches (called again to cycle a small split).
    Sums run in float64: 2000 x 4 x 16 x 16 values lose digits in float32.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    s1 = s2 = None  # per-channel sum and sum of squares, float64 (C,)
    n_latents, n_values = 0, 0
    while n_latents < min_latents:
        seen_this_pass = 0
        for batch in batches():
            x = batch_images(batch)
            x = x.to(device) if device is not None else x
            mu, sigma = posterior(x)  # (B, C, h, w)
            eps = torch.randn(mu.shape, generator=gen).to(mu.device, mu.dtype)
            z = (mu + sigma * eps).double()  # a posterior sample, as the denoiser sees
            c1, c2 = z.sum(dim=(0, 2, 3)).cpu(), (z * z).sum(dim=(0, 2, 3)).cpu()
            s1, s2 = (c1, c2) if s1 is None else (s1 + c1, s2 + c2)
            n_latents += z.shape[0]
            seen_this_pass += z.shape[0]
            n_values += z.shape[0] * z.shape[2] * z.shape[3]
            if n_latents >= min_latents:
                break
        if seen_this_pass == 0:
            raise ValueError("the training data yielded no batches: cannot measure latent stats")
    mean_c = s1 / n_values  # (C,)
    var_c = (s2 / n_values - mean_c**2).clamp_min(1e-12)
    if per_channel:
        shift, std = mean_c, var_c.sqrt()
    else:
        # One pair for all channels: the pooled mean and the pooled variance
        # around it (within-channel variance + spread of the channel means).
        g_mean = mean_c.mean()
        g_var = (var_c + (mean_c - g_mean) ** 2).mean()
        shift, std = g_mean.view(1), g_var.sqrt().view(1)
    stats = LatentStats(
        shift=[float(v) for v in shift],
        scale=[float(1.0 / v) for v in std],
        per_channel=per_channel,
        n_latents=n_latents,
        vae_hash=vae_hash,
        data_hash=data_hash(data_fingerprint),
        data_fingerprint=data_fingerprint,
        extra={
            "channel_mean": [float(v) for v in mean_c],
            "channel_std": [float(v) for v in var_c.sqrt()],
        },
    )
    log.info(
        "latent stats over %d posterior samples: shift %s, scale %s",
        n_latents,
        [round(v, 3) for v in stats.shift],
        [round(v, 3) for v in stats.scale],
    )
    return stats


def fallback_stats(
    scaling_factor: float, shift_factor: float | None, channels: int, vae_hash: str
) -> LatentStats:
    """The VAE config's scaling_factor: a number measured on somebody else's data."""
    return LatentStats(
        shift=[float(shift_factor or 0.0)],
        scale=[float(scaling_factor)],
        per_channel=False,
        vae_hash=vae_hash,
        source="config scaling_factor (fallback)",
    )


__all__ = [
    "STATS_FILE",
    "LatentStats",
    "batch_images",
    "data_hash",
    "fallback_stats",
    "load_latent_stats",
    "measure_latent_stats",
    "save_latent_stats",
    "stats_valid",
    "vae_weights_hash",
    "weights_file",
]
