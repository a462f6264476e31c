"""Which VAE a diffusion run uses, and how an export refers to it.

`vae.path` set   -> load that folder (our export, a diffusers save_pretrained
                    folder, or a pipeline folder with a vae/ subfolder);
                    latent stats measured on this run's training data if the
                    folder has none that match.
`vae.path` null  -> the VAE trained by this project for (vae recipe, data,
                    seed) under paths.cache_dir/vae/<name>-<hash>; trained
                    first through the VAE stage when it does not exist yet
                    (one process trains under a file lock, the others wait).
`vae=none`       -> pixel-space baseline, no VAE.

An export (and a checkpoint) stores a *reference* instead of the weights: the
folder, the sha256 of its weights and the latent stats in force. Loading a
reference checks the hash, so a VAE replaced after training is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import stable_hash
from latent_diffusion.vae.interface import FrozenVAE
from latent_diffusion.vae.stats import LatentStats, vae_weights_hash

log = logging.getLogger(__name__)


def default_vae_dir(cfg: DictConfig, fingerprint: dict) -> Path:
    """Where the project's own VAE for this recipe + data + seed lives."""
    recipe = OmegaConf.to_container(cfg.vae, resolve=True)
    recipe.pop("path", None)
    key = stable_hash({"vae": recipe, "data": fingerprint, "seed": int(cfg.seed)})
    return Path(cfg.paths.cache_dir) / "vae" / f"{cfg.vae.name}-{key}"


def load_or_train_vae(cfg: DictConfig, dm) -> FrozenVAE | None:
    """The frozen VAE of a diffusion run (see module doc): loaded, or trained first when the
    project's own VAE for this recipe + data + seed does not exist yet; None for vae=none."""
    if cfg.vae.get("name") == "none":
        return None
    path = cfg.vae.get("path")
    if path is None:
        path = default_vae_dir(cfg, dm.fingerprint())
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not (path / "config.json").is_file():
                from latent_diffusion.train_vae import train_vae_for

                log.info(
                    "no VAE at %s: training one first (vae=%s, %s steps); later runs reuse it. "
                    "Set vae.path=DIR to use your own.",
                    path,
                    cfg.vae.name,
                    cfg.vae.get("max_steps"),
                )
                train_vae_for(cfg, path)
    train_ds = dm.dataset("train")
    return FrozenVAE.load(
        path,
        data_channels=dm.channels,
        train_batches=lambda: DataLoader(train_ds, batch_size=64, shuffle=False),
        data_fingerprint=dm.fingerprint(),
        per_channel=bool(cfg.vae.get("per_channel_stats", True)),
        min_latents=int(cfg.vae.get("min_stats_latents", 2000)),
        cache_dir=cfg.paths.cache_dir,
    )


def vae_reference(vae: FrozenVAE) -> dict:
    return {
        "path": str(Path(vae.path).resolve()) if vae.path is not None else None,
        "weights_hash": vae.weights_hash,
        "data_channels": vae.data_channels,
        "latent_stats": vae.stats.to_json() if vae.stats is not None else None,
    }


def vae_from_reference(ref: dict, device="cpu", path_override=None) -> FrozenVAE:
    """Load the VAE an export names; its weights must hash to what was trained with."""
    path = path_override or ref.get("path")
    if path is None or not Path(path).exists():
        raise UserError(
            f"the VAE this model was trained with is not at {path}; copy it there or pass "
            "vae_path=DIR pointing at the same VAE folder"
        )
    found = vae_weights_hash(path)
    if found != ref["weights_hash"]:
        raise UserError(
            f"the VAE at {path} has weights hash {found}, but the model was trained with "
            f"{ref['weights_hash']}: it is a different VAE. Point vae_path at the original one"
        )
    from diffusers import AutoencoderKL

    from latent_diffusion.vae.interface import resolve_vae_folder

    # low_cpu_mem_usage needs `accelerate` (not a dependency); asking for it off says so, instead
    # of diffusers warning on every load that it is missing
    model = AutoencoderKL.from_pretrained(resolve_vae_folder(path), low_cpu_mem_usage=False)
    stats = LatentStats.from_json(ref["latent_stats"])
    return FrozenVAE(model, stats, ref.get("data_channels", 1), found, Path(path)).to(device)
