"""Small helpers shared by every stage: user-facing errors, atomic writes, hashing."""

from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_dir, atomic_write_bytes, atomic_write_json, stable_hash

__all__ = ["UserError", "atomic_dir", "atomic_write_bytes", "atomic_write_json", "stable_hash"]
