"""The VAE stage: a frozen VAE interface with measured latent scale, and VAE training.

interface.py  FrozenVAE: load a diffusers AutoencoderKL, encode/decode in scaled space
stats.py      latent shift/scale: measure, save, load, hash check
module.py     VAETrainer: the LightningModule that trains an AutoencoderKL
export.py     diffusers folder + latent_stats.json + reconstructions.png, atomically
"""

from latent_diffusion.vae.interface import FrozenVAE, LatentStatsWarning, resolve_vae_folder
from latent_diffusion.vae.stats import LatentStats, load_latent_stats, measure_latent_stats

__all__ = [
    "FrozenVAE",
    "LatentStats",
    "LatentStatsWarning",
    "load_latent_stats",
    "measure_latent_stats",
    "resolve_vae_folder",
]
