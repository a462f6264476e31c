"""The run export: a LatentDiffusionPipeline folder of the EMA weights (pipeline.py has its layout).

`export_run` is the training side: it fills the pipeline's config from the run's
Hydra config and writes the folder. Loading is `LatentDiffusionPipeline.from_pretrained`,
which needs neither Lightning nor Hydra.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from latent_diffusion.pipeline import LatentDiffusionPipeline, diffusers_model, find_export


def _derived(denoiser) -> dict:
    """The constructor arguments the training code filled in from VAE, data and diffusion."""
    sample_size = diffusers_model(denoiser).config.sample_size
    return {
        "in_channels": denoiser.in_channels,
        "sample_size": sample_size,
        "num_classes": denoiser.num_classes,
        "learn_sigma": denoiser.learn_sigma,
    }


def export_run(module, cfg: DictConfig, export_dir, data_subset: dict | None = None) -> Path:
    """Write `module`'s EMA denoiser, diffusion, VAE reference and class names as a pipeline folder.
    data_subset: which real training images the run saw (SpectrogramDataModule.subset plus the
    data fingerprint), so `evaluate` can train the classifiers it augments on the same ones."""
    denoiser = module.plain_denoiser
    config = {
        "image_size": int(cfg.data.image_size),
        "model": {**OmegaConf.to_container(cfg.model, resolve=True), **_derived(denoiser)},
        "diffusion": OmegaConf.to_container(cfg.diffusion, resolve=True),
    }
    with module.ema.swap_into(denoiser):
        pipe = LatentDiffusionPipeline(
            denoiser, module.diffusion, module.class_names, module.latent_shape, module.vae, config
        )
        return pipe.save_pretrained(
            export_dir,
            OmegaConf.to_yaml(cfg, resolve=True),
            global_step=int(module.global_step),
            ema_decay=float(module.ema.decay),
            data_subset=data_subset,
        )


def load_export(run, device="cpu", load_vae: bool = True) -> LatentDiffusionPipeline:
    """The pipeline of a run directory or export folder
    (LatentDiffusionPipeline.from_pretrained)."""
    return LatentDiffusionPipeline.from_pretrained(run, device=device, load_vae=load_vae)


__all__ = ["export_run", "find_export", "load_export"]
