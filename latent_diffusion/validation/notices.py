"""Silent changes made explicit: where an entry point replaces what the config says by
something else (a latent mode, a batch size), it says so once, before the work, with the
reason and the key that gives the user the other choice."""

from __future__ import annotations

import logging

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation.numbers import ABSENT, select

log = logging.getLogger("latent_diffusion")


def train_notices(cfg) -> None:
    vae, latents = select(cfg, "vae.name"), select(cfg, "data.latents")
    if vae is ABSENT or latents is ABSENT:
        return
    if vae == "none" and latents == "cached":
        raise UserError("data.latents=cached needs a VAE; with vae=none use data.latents=pixel")
    if vae == "none" and latents == "online":
        log.warning("vae=none: the denoiser trains on pixels (data.latents=online becomes pixel); "
                    "pass data.latents=pixel to say so, or choose a VAE for latent diffusion")
    if vae != "none" and latents == "pixel":
        log.warning("data.latents=pixel with vae=%s: the denoiser trains on latents encoded each step "
                    "(data.latents=online); use vae=none for a pixel-space baseline", vae)


def train_vae_notices(cfg) -> None:
    vae_batch, data_batch = select(cfg, "vae.batch_size", None), select(cfg, "data.batch_size", None)
    if vae_batch not in (None, ABSENT) and data_batch not in (None, ABSENT) and vae_batch != data_batch:
        log.warning("the VAE trains in batches of vae.batch_size=%s (its recipe), not data.batch_size=%s; "
                    "set vae.batch_size to change it (vae.batch_size=null takes data.batch_size)",
                    vae_batch, data_batch)
