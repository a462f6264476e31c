"""The frozen VAE: load a diffusers AutoencoderKL, encode / decode in the denoiser's scaled space.

Latent diffusion (Rombach et al. 2022, section 3) trains the denoiser on
z' = (z - shift) * scale, z ~ q(z | x) of a frozen autoencoder. `FrozenVAE`
owns that map in both directions, with shift and scale MEASURED on the
training data (stats.py), so nothing downstream multiplies by 0.18215.

FrozenVAE is deliberately a plain object, not an nn.Module: assigned as an
attribute of a LightningModule it is not a submodule, so it is in no
optimizer, no state_dict / checkpoint, and no EMA copy of the denoiser. It
follows the device of the tensors it is given (or `.to(device)`).

Channel bridge: a 3-channel (RGB) VAE on 1-channel spectrograms gets the
channel repeated three times on the way in, and its 3 output channels averaged
on the way out (the mean of an RGB decode of a grey input is the least-squares
grey value). 3-channel data on a 1-channel VAE cannot be bridged without
throwing information away, so it is a UserError.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from latent_diffusion.utils.errors import UserError
from latent_diffusion.vae.stats import (
    STATS_FILE,
    WEIGHT_FILES,
    LatentStats,
    data_hash,
    fallback_stats,
    load_latent_stats,
    measure_latent_stats,
    save_latent_stats,
    stats_valid,
    vae_weights_hash,
)

log = logging.getLogger(__name__)


class LatentStatsWarning(UserWarning):
    """The latents are scaled by something other than stats measured on this data."""


# ------------------------------------------------------------------ path checks


def resolve_vae_folder(path: str | os.PathLike) -> Path:
    """The save_pretrained folder of an AutoencoderKL: `path` itself or `path/vae` of a pipeline."""
    fix = (
        "set vae.path to a folder written by AutoencoderKL.save_pretrained (a pipeline folder "
        "or its vae/ subfolder also works), or make one with "
        "`python -m latent_diffusion.train_vae out_dir=<folder>`"
    )
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"VAE folder {folder} does not exist; {fix}")
    if not folder.is_dir():
        raise UserError(f"VAE path {folder} is a file, not a folder; {fix}")
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a whole pipeline (model_index.json, unet/, vae/, ...)
    config = folder / "config.json"
    if not config.is_file():
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise UserError(
            f"{folder} is not a diffusers model folder (no config.json; found {found}); {fix}"
        )
    try:
        cls = json.loads(config.read_text()).get("_class_name")
    except ValueError as err:
        raise UserError(f"{config} is not valid JSON ({err}); {fix}") from None
    if cls != "AutoencoderKL":
        raise UserError(f"{config} describes a {cls}, not an AutoencoderKL; {fix}")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise UserError(
            f"{folder} has a config.json but no weights ({' or '.join(WEIGHT_FILES)}); {fix}"
        )
    return folder


def check_channels(model: AutoencoderKL, data_channels: int, where: str) -> None:
    vae_in = int(model.config.in_channels)
    vae_out = int(model.config.out_channels)
    ok = (vae_in == data_channels or (data_channels == 1 and vae_in == 3)) and (
        vae_out == data_channels or (data_channels == 1 and vae_out == 3)
    )
    if not ok:
        raise UserError(
            f"the VAE at {where} has in/out channels {vae_in}/{vae_out} but the data has "
            f"{data_channels} channel(s); 1-channel spectrograms can use a 1- or 3-channel VAE, "
            f"other data needs a VAE with in_channels={data_channels}: train one with "
            f"`python -m latent_diffusion.train_vae data=...` or choose another vae.path"
        )


# ------------------------------------------------------------------ the frozen VAE


class FrozenVAE:
    """encode: pixels (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w); decode: back."""

    def __init__(
        self,
        model: AutoencoderKL,
        stats: LatentStats | None = None,
        data_channels: int = 1,
        weights_hash: str = "",
        path: Path | None = None,
    ):
        check_channels(model, data_channels, str(path or "<in memory>"))
        self.model = model.eval().requires_grad_(False)
        self.data_channels = data_channels
        self.weights_hash = weights_hash
        self.path = path
        self.latent_channels = int(model.config.latent_channels)
        # AutoencoderKL down-samples once per block but the last one.
        self.downsample_factor = 2 ** (len(model.config.block_out_channels) - 1)
        self.stats: LatentStats | None = None
        if stats is not None:
            self.set_stats(stats)

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        data_channels: int = 1,
        *,
        train_batches: Callable[[], Iterable] | None = None,
        data_fingerprint: dict | None = None,
        per_channel: bool = True,
        min_latents: int = 2000,
        cache_dir: str | os.PathLike | None = None,
        device=None,
    ) -> FrozenVAE:
        """Load a VAE folder and its latent stats, measuring them on `train_batches` if needed.

        Stats are taken from `<folder>/latent_stats.json` or the cache when they
        match the weights hash (and the data fingerprint, when both are known);
        otherwise they are measured on the training batches and cached under
        `cache_dir/vae_stats/` (the user's VAE folder is never written). With no
        data to measure on, the config's scaling_factor is used with a warning.
        """
        folder = resolve_vae_folder(path)
        try:
            model = AutoencoderKL.from_pretrained(
                folder, low_cpu_mem_usage=False
            )  # no accelerate: no warning
        except Exception as err:  # diffusers raises many types for a broken folder
            raise UserError(
                f"could not load an AutoencoderKL from {folder} ({type(err).__name__}: {err}): "
                f"the folder "
                "is damaged or incomplete (e.g. truncated weights); rebuild it (`python -m "
                "latent_diffusion.train_vae out_dir=<folder>`, save_pretrained for your own VAE; "
                "the "
                "project's cached VAE under paths.cache_dir/vae is rebuilt once deleted) or "
                "choose another vae.path"
            ) from None
        vae = cls(model, None, data_channels, vae_weights_hash(folder), folder)
        if device is not None:
            vae.to(device)
        vae.ensure_stats(train_batches, data_fingerprint, per_channel, min_latents, cache_dir)
        return vae

    def ensure_stats(
        self,
        train_batches: Callable[[], Iterable] | None,
        data_fingerprint: dict | None,
        per_channel: bool = True,
        min_latents: int = 2000,
        cache_dir: str | os.PathLike | None = None,
    ) -> LatentStats:
        dh = data_hash(data_fingerprint)
        candidates = []
        if self.path is not None:
            candidates.append(self.path / STATS_FILE)
        cached = None
        if cache_dir is not None:
            tag = f"{self.weights_hash}-{dh or 'anydata'}-{'channel' if per_channel else 'global'}"
            cached = Path(cache_dir) / "vae_stats" / f"{tag}.json"
            candidates.append(cached)
        for p in candidates:
            stats = load_latent_stats(p)
            ok, why = stats_valid(stats, self.weights_hash, dh, per_channel)
            if ok:
                log.info("latent stats from %s", p)
                return self.set_stats(stats)
            if stats is not None:
                log.warning("not using latent stats %s: %s; measuring them again", p, why)
        if train_batches is None:
            cfg = self.model.config
            warnings.warn(
                f"no latent stats measured for the VAE at {self.path} on this data: falling back "
                f"to "
                f"its config's scaling_factor={cfg.scaling_factor} (measured on other data, so the "
                "denoiser's latents will not be unit Gaussians); pass the training data to "
                "measure them",
                LatentStatsWarning,
                stacklevel=2,
            )
            return self.set_stats(
                fallback_stats(
                    cfg.scaling_factor, cfg.shift_factor, self.latent_channels, self.weights_hash
                )
            )
        if self.path is not None and not (self.path / STATS_FILE).exists():
            warnings.warn(
                f"the VAE at {self.path} has no {STATS_FILE}: measuring shift/scale on the "
                f"training "
                f"data (its config's scaling_factor={self.model.config.scaling_factor} is not "
                f"used)",
                LatentStatsWarning,
                stacklevel=2,
            )
        lock = None
        if cached is not None:
            from filelock import FileLock

            cached.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cached) + ".lock")  # DDP ranks / sweep jobs: one measures
            lock.acquire()
        try:
            stats = load_latent_stats(cached) if cached is not None else None
            if not stats_valid(stats, self.weights_hash, dh, per_channel)[0]:
                stats = measure_latent_stats(
                    self.posterior,
                    train_batches,
                    per_channel=per_channel,
                    min_latents=min_latents,
                    vae_hash=self.weights_hash,
                    data_fingerprint=data_fingerprint,
                )
                if cached is not None:
                    save_latent_stats(cached, stats)
        finally:
            if lock is not None:
                lock.release()
        return self.set_stats(stats)

    def set_stats(self, stats: LatentStats) -> LatentStats:
        self.stats = stats
        self._shift, self._scale = stats.tensors(self.latent_channels, self.device)  # (1, c, 1, 1)
        return stats

    # -- device -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> FrozenVAE:
        self.model.to(device)
        if self.stats is not None:
            self._shift, self._scale = self._shift.to(device), self._scale.to(device)
        return self

    def _follow(self, t: torch.Tensor) -> None:
        if t.device != self.device:
            self.to(t.device)

    # -- shapes -------------------------------------------------------------------
    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(c, h, w) of the latent of an image_size x image_size image: 64 -> (4, 16, 16) for f4."""
        if image_size % self.downsample_factor:
            raise UserError(
                f"image size {image_size} is not a multiple of the VAE's down-sampling factor "
                f"{self.downsample_factor}; choose data.image_size accordingly"
            )
        s = image_size // self.downsample_factor
        return (self.latent_channels, s, s)

    # -- raw posterior (what the latent cache stores) --------------------------------
    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw q(z | x) mean and std, each (B, c, h, w), unscaled; x (B, C, H, W) in [-1, 1]."""
        self._follow(x)
        if x.shape[1] != self.data_channels:
            raise UserError(
                f"expected {self.data_channels}-channel images, got shape {tuple(x.shape)}"
            )
        # fp32 whatever the surrounding autocast: latents are the denoiser's targets.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.data_channels == 1 and self.model.config.in_channels == 3:
                x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W): grey into an RGB VAE
            dist = self.model.encode(x).latent_dist
        return dist.mean, dist.std  # (B, c, h, w) each

    def scale_posterior(
        self, mean: torch.Tensor, std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (mean, std) -> the denoiser's space: ((mean - shift) * scale, std * scale)."""
        shift, scale = self._shift.to(mean.device), self._scale.to(mean.device)
        return (mean - shift) * scale, std * scale

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / self._scale.to(z.device) + self._shift.to(z.device)

    # -- the public pair ------------------------------------------------------------
    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior (mean, std), each (B, c, h, w)."""
        return self.scale_posterior(*self.posterior(x))

    def encode(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latent (B, c, h, w): a posterior sample (default) or the posterior mean."""
        mean, std = self.encode_posterior(x)
        if not sample:
            return mean
        eps = torch.randn(
            mean.shape,
            generator=generator,
            device=mean.device if generator is None else generator.device,
            dtype=mean.dtype,
        ).to(mean.device)
        return mean + std * eps

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> pixels (B, C, H, W) clamped to [-1, 1]."""
        self._follow(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = self.model.decode(self.unscale_latents(z.float())).sample  # (B, C_vae, H, W)
        if x.shape[1] != self.data_channels:
            x = x.mean(dim=1, keepdim=True)  # RGB VAE -> grey spectrogram (see module doc)
        return x.clamp(-1.0, 1.0)


__all__ = ["FrozenVAE", "LatentStatsWarning", "check_channels", "resolve_vae_folder"]
