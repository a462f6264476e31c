"""Image sizes the VAE and the denoiser can take, checked whichever way the VAE arrives
(vae.path to a folder, trained first from the vae recipe, or none): an f4 VAE halves the
side twice, then the UNet halves the latent once per extra channel_mult level, so a size
that does not divide would otherwise fail as a shape mismatch deep inside the first step,
after the VAE has been trained."""

from __future__ import annotations

import json
from pathlib import Path

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation.numbers import ABSENT, select


def vae_factor(cfg) -> tuple[int, str] | None:
    """(down-sampling factor, where it comes from), or None when it cannot be known here."""
    name = select(cfg, "vae.name")
    if name is ABSENT:
        return None
    if name == "none":
        return 1, "vae=none"
    path = select(cfg, "vae.path", None)
    if path:
        for config in (Path(path) / "config.json", Path(path) / "vae" / "config.json"):
            try:
                blocks = json.loads(config.read_text())["block_out_channels"]
                return 2 ** (len(blocks) - 1), f"the VAE at vae.path={path}"
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None  # loading it names the problem with the folder (vae/interface.py)
    blocks = select(cfg, "vae.module.autoencoder.block_out_channels", None)
    if blocks:
        return 2 ** (
            len(blocks) - 1
        ), f"vae={name} (vae.module.autoencoder.block_out_channels={list(blocks)})"
    return None


def _near(size: int, step: int) -> str:
    lo = max(step, size // step * step)
    return f"{lo} or {lo + step}" if lo != size else str(lo)


def check_sizes(cfg, size_key: str = "data.image_size", model: bool = True) -> None:
    size = select(cfg, size_key)
    if size is ABSENT or size is None:
        return  # image_folder with image_size=null keeps the files' size; the reader checks them
    if not isinstance(size, int) or size < 8:
        raise UserError(
            f"{size_key}={size!r}: must be an integer >= 8 (64 or 128 are the tested sizes)"
        )
    found = vae_factor(cfg)
    if found is None:
        return
    factor, source = found
    if size % factor:
        raise UserError(
            f"{size_key}={size} is not divisible by {factor}, the down-sampling factor of "
            f"{source}; use {size_key}={_near(size, factor)}"
        )
    mult = select(cfg, "model.channel_mult", None) if model else None
    if mult:
        levels = 2 ** (len(mult) - 1)
        latent = size // factor
        if latent % levels:
            raise UserError(
                f"{size_key}={size} gives {latent}x{latent} latents ({source}), which "
                f"model.channel_mult="
                f"{list(mult)} halves {len(mult) - 1} times: not an integer size. Use {size_key}="
                f"{_near(size, factor * levels)}, or a model with fewer levels"
            )
