"""Data layer: sources (simulator, readers), transforms, latent cache, the DataModule."""

from latent_diffusion.data.source import SPLITS, SpectrogramSource, build_source, register_source

__all__ = ["SPLITS", "SpectrogramSource", "build_source", "register_source"]
