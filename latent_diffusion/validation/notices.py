"""Silent changes made explicit: where an entry point replaces what the config says by
something else (the VAE recipe's batch size over data.batch_size), it says so once, before
the work, with the reason and the key that gives the user the other choice. (A data.latents
that contradicts the VAE choice is an error, train.check_latents_mode.)"""

from __future__ import annotations

import logging

from latent_diffusion.validation.numbers import ABSENT, select

log = logging.getLogger("latent_diffusion")


def train_vae_notices(cfg) -> None:
    vae_batch, data_batch = (
        select(cfg, "vae.batch_size", None),
        select(cfg, "data.batch_size", None),
    )
    if (
        vae_batch not in (None, ABSENT)
        and data_batch not in (None, ABSENT)
        and vae_batch != data_batch
    ):
        log.warning(
            "the VAE trains in batches of vae.batch_size=%s (its recipe), not data.batch_size=%s; "
            "set vae.batch_size to change it (vae.batch_size=null takes data.batch_size)",
            vae_batch,
            data_batch,
        )
