"""latent_diffusion: class-conditional latent diffusion for radar micro-Doppler spectrograms.

Data flows one way: data -> (VAE) -> latents -> denoiser -> samples -> decode -> images -> metrics.
Pixel convention inside the package: float tensors in [-1, 1], shape (B, C, H, W).
"""

__version__ = "0.1.0"

from latent_diffusion.utils.resolvers import register as _register_resolvers

_register_resolvers()
