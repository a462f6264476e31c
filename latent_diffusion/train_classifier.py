"""python -m latent_diffusion.train_classifier denoiser_run=outputs/train/<run>
classifier_model=small

guided-diffusion's classifier_train.py on latents: data -> frozen VAE (the denoiser run's,
with its latent statistics) -> noisy latent classifier -> Trainer.fit -> classifier/ export
(EMA weights + accuracy per timestep bucket), which `sample classifier=...` loads.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)


def adopt_denoiser_run(cfg: DictConfig):
    """denoiser_run=<run>: its data, VAE, diffusion and seed replace ours -> the VAE reference to
    use
    (None: resolve the VAE from cfg.vae, as `train` does)."""
    if not cfg.get("denoiser_run"):
        return None
    from latent_diffusion.pipeline import read_export_meta

    export, meta = read_export_meta(cfg.denoiser_run)
    if meta.get("distilled"):
        raise UserError(
            f"denoiser_run={cfg.denoiser_run} is a distilled consistency student, which takes no "
            "classifier guidance; train the classifier for its teacher: "
            f"denoiser_run={meta['distilled']['teacher']['export']}"
        )
    if not (export / "config.yaml").is_file():
        raise UserError(
            f"denoiser_run={cfg.denoiser_run}: {export / 'config.yaml'} is missing, so its data "
            "config is unknown; give the data/vae/diffusion overrides of that run instead"
        )
    run_cfg = OmegaConf.load(export / "config.yaml")
    with open_dict(cfg):
        cfg.data = run_cfg.data
        cfg.vae = run_cfg.vae
        cfg.diffusion = run_cfg.diffusion
        cfg.seed = run_cfg.seed
    log.info(
        "denoiser_run=%s: data, VAE, latent statistics and diffusion schedule taken from its "
        "export",
        export,
    )
    return meta.get("vae")


def build(cfg: DictConfig):
    """(datamodule, module, trainer) from the composed config."""
    from latent_diffusion.lit.classifier_module import NoisyClassifier
    from latent_diffusion.train import check_latents_mode, latent_space
    from latent_diffusion.vae.resolve import load_or_train_vae, vae_from_reference

    torch.set_float32_matmul_precision(cfg.torch.matmul_precision)
    vae_ref = adopt_denoiser_run(cfg)
    check_latents_mode(cfg)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    if dm.num_classes < 2:
        raise UserError(
            f"data: {dm.num_classes} class ({dm.class_names}); a classifier needs at least two"
        )
    # the denoiser run's own VAE and latent statistics, hash-checked; else as `train` resolves it
    vae = vae_from_reference(vae_ref) if vae_ref else load_or_train_vae(cfg, dm)
    latent_shape = latent_space(cfg, dm, vae)
    # seed again, as `train` does: a VAE trained or read here must not change the initial weights
    L.seed_everything(cfg.seed, workers=True)
    diffusion = instantiate(cfg.diffusion)
    classifier = instantiate(
        cfg.classifier,
        in_channels=latent_shape[0],
        sample_size=latent_shape[1],
        num_classes=dm.num_classes,
    )
    log.info(
        "classifier: %s, %.2fM parameters, latents %s",
        cfg.classifier.name,
        classifier.num_params / 1e6,
        latent_shape,
    )
    max_steps = int(cfg.trainer.max_steps)
    module = NoisyClassifier(
        classifier=classifier,
        diffusion=diffusion,
        optimizer=instantiate(cfg.optimizer),
        class_names=dm.class_names,
        latent_shape=latent_shape,
        vae=vae,
        ema_decay=cfg.ema_decay,
        warmup_steps=cfg.warmup_steps,
        anneal_steps=max_steps if cfg.anneal_lr and max_steps > 0 else None,
        small_t_power=cfg.small_t_power,
        latent_noise=cfg.latent_noise,
        val_buckets=cfg.val_buckets,
        seed=cfg.seed,
    )
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c
    ]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    extra = (
        {} if cfg.trainer.get("default_root_dir") else {"default_root_dir": cfg.paths.output_dir}
    )
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    return dm, module, trainer


def check_config(cfg: DictConfig) -> None:
    """Values out of range, before any data or VAE work starts."""
    if not float(cfg.small_t_power) >= 0:
        raise UserError(f"small_t_power={cfg.small_t_power}: use a number >= 0 (0 = uniform t)")
    if not float(cfg.latent_noise) >= 0:
        raise UserError(f"latent_noise={cfg.latent_noise}: use a number >= 0 (0 = no augmentation)")
    if int(cfg.val_buckets) < 1:
        raise UserError(f"val_buckets={cfg.val_buckets}: use an integer >= 1")


def train_classifier(cfg: DictConfig) -> dict:
    from latent_diffusion.models.classifier_io import classifier_meta, save_classifier
    from latent_diffusion.train import resolve_ckpt_path
    from latent_diffusion.vae.resolve import vae_reference

    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    dm, module, trainer = build(cfg)
    trainer.fit(
        module,
        datamodule=dm,
        ckpt_path=resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir),
        weights_only=True,
    )
    trainer.validate(module, datamodule=dm, verbose=False)  # the final EMA weights, every bucket
    metrics = {
        k: round(float(v), 4)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val/") and v.numel() == 1
    }
    if trainer.is_global_zero:
        meta = classifier_meta(
            module.class_names,
            module.latent_shape,
            cfg.data.image_size,
            OmegaConf.to_container(cfg.diffusion, resolve=True),
            vae_reference(module.vae) if module.vae is not None else None,
            global_step=int(module.global_step),
            small_t_power=float(cfg.small_t_power),
            latent_noise=float(cfg.latent_noise),
            validation=metrics,
        )
        with module.ema.swap_into(module.classifier):
            save_classifier(module.classifier, meta, cfg.export_dir)
        log.info("classifier written to %s; validation %s", cfg.export_dir, metrics)
    return metrics


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="train_classifier")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    preflight("train_classifier", cfg)
    return train_classifier(cfg).get("val/loss")


if __name__ == "__main__":
    main()
