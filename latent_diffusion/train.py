"""python -m latent_diffusion.train model=small data=microdoppler

compose config -> data -> frozen VAE (trained first if its artifact is absent)
-> denoiser + diffusion -> LightningModule -> Trainer.fit -> export (EMA weights).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path, output_dir: str | Path):
    """`last` -> the newest complete checkpoint of the run (checkpoints/last.ckpt, or the
    hpc_ckpt_<n>.ckpt Lightning writes on SLURM's requeue signal) when one exists (resume),
    else a fresh start. Temporary files a killed save left behind are removed, never read."""
    if ckpt_path in (None, "", "null"):
        if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
            return None
        # a requeued SLURM job (pre-empted or timed out) is the same run: resume it
        log.info(
            "SLURM_RESTART_COUNT=%s: a requeued job, resuming as with ckpt_path=last",
            os.environ["SLURM_RESTART_COUNT"],
        )
        ckpt_path = "last"
    if ckpt_path == "last":
        from latent_diffusion.utils.io import stale_temporaries

        out = Path(output_dir)
        if (
            int(os.environ.get("LOCAL_RANK", "0")) == 0
            and int(os.environ.get("NODE_RANK", "0")) == 0
        ):
            for tmp in stale_temporaries(out / "checkpoints"):
                log.warning(
                    "removing %s: a checkpoint save that never finished (the process was killed)",
                    tmp,
                )
                tmp.unlink(missing_ok=True)
        found = [
            p
            for p in [out / "checkpoints" / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")]
            if p.is_file()
        ]
        if found:
            last = max(found, key=lambda p: p.stat().st_mtime_ns)
            log.info("resuming from %s", last)
            return str(last)
        log.info(
            "ckpt_path=%s: no %s yet, starting fresh", ckpt_path, out / "checkpoints" / "last.ckpt"
        )
        return None
    if not Path(ckpt_path).is_file():
        raise UserError(
            f"ckpt_path={ckpt_path}: no such checkpoint file; give a .ckpt path, 'last' "
            "(resume the run's newest checkpoint, or start fresh if it has none) or null"
        )
    return str(ckpt_path)


def check_latents_mode(cfg: DictConfig) -> None:
    """data.latents must agree with the VAE choice; said before a VAE is trained or loaded."""
    mode, no_vae = cfg.data.get("latents"), cfg.vae.get("name") == "none"
    if no_vae and mode != "pixel":
        raise UserError(
            f"data.latents={mode} needs a VAE, but vae=none trains in pixel space; "
            "pass data.latents=pixel with vae=none (experiment=pixel_baseline does)"
        )
    if not no_vae and mode == "pixel":
        raise UserError(
            f"data.latents=pixel trains on pixels, but vae={cfg.vae.get('name')} is a latent "
            "model; use data.latents=online or cached, or vae=none for a pixel-space baseline"
        )


def describe_data(dm, run_dir: Path) -> None:
    """The short form of what the model will see into the log, the full one (with a preview
    grid of the inputs) into the run folder: what `inspect` shows before a run."""
    from latent_diffusion.data import summary

    s = summary.summarise(dm)
    log.info("data: %s", summary.short_form(s))
    summary.write(s, dm, run_dir)


def latent_space(cfg: DictConfig, dm, vae) -> tuple[int, int, int]:
    """The (C, H, W) the model sees: the VAE's latent shape (its latent cache attached when
    data.latents=cached), or the pixels' for a pixel-space baseline. Shared by `train` and
    `train_classifier`, whose classifier must see the denoiser's inputs."""
    if vae is None:
        return (dm.channels, dm.image_size, dm.image_size)
    if dm.latents == "cached":
        dm.use_latent_cache(vae, Path(cfg.paths.cache_dir) / "latents")
    return vae.latent_shape(dm.image_size)


def build(cfg: DictConfig):
    """Everything `fit` needs, from the composed config: (datamodule, module, trainer)."""
    from latent_diffusion.lit.module import LatentDiffusion
    from latent_diffusion.lit.safe_load import run_signature
    from latent_diffusion.vae.resolve import load_or_train_vae

    check_latents_mode(cfg)
    torch.set_float32_matmul_precision(cfg.torch.matmul_precision)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    describe_data(dm, Path(cfg.paths.output_dir))
    vae = load_or_train_vae(cfg, dm)  # None for a pixel-space baseline (vae=none)
    latent_shape = latent_space(cfg, dm, vae)

    # Seed again: whether the VAE was trained, its stats measured or the latent cache built
    # in this process (first run) or read from disk (later runs) must not change the
    # denoiser's initial weights or the training draws (same seed -> same run).
    L.seed_everything(cfg.seed, workers=True)
    diffusion = instantiate(cfg.diffusion)
    extra = {"channels_last": True} if cfg.torch.channels_last else {}
    denoiser = instantiate(
        cfg.model,
        in_channels=latent_shape[0],
        sample_size=latent_shape[1],
        num_classes=dm.num_classes,
        learn_sigma=diffusion.learn_sigma,
        **extra,
    )
    log.info(
        "denoiser: %s, %.2fM parameters, latents %s",
        cfg.model.name,
        denoiser.num_params / 1e6,
        latent_shape,
    )
    if cfg.torch.compile:
        denoiser = torch.compile(denoiser)
    module = LatentDiffusion(
        denoiser=denoiser,
        diffusion=diffusion,
        optimizer=instantiate(cfg.optimizer),
        class_names=dm.class_names,
        latent_shape=latent_shape,
        vae=vae,
        ema_decay=cfg.ema_decay,
        warmup_steps=cfg.warmup_steps,
        max_bad_steps=cfg.max_bad_steps,
        seed=cfg.seed,
    )
    trainer = build_trainer(cfg, run_signature(cfg, dm.class_names, latent_shape, vae))
    return dm, module, trainer


def build_trainer(cfg: DictConfig, signature: dict):
    """The Trainer of a run with the reliability wiring (docs/reliability.md): atomic +
    weights_only checkpoints that carry the run signature, RNG continuity and save-on-signal;
    SLURM's hpc_ckpt in the run dir. Shared by `train` and `distill`. Callback entries
    without a _target_ are skipped (debug=fast sets keys of train's sample_grid, which
    `distill` has no callback for)."""
    from latent_diffusion.lit.checkpoint_io import AtomicCheckpointIO, ResumeState

    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c
    ]
    callbacks.append(ResumeState(signature))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    extra = (
        {} if cfg.trainer.get("default_root_dir") else {"default_root_dir": cfg.paths.output_dir}
    )
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO(signature)],
        **extra,
    )


def train(cfg: DictConfig) -> dict:
    from latent_diffusion.lit.export import export_run

    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    dm, module, trainer = build(cfg)
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from torch.multiprocessing import ProcessRaisedException

    from latent_diffusion.lit.checkpoint_io import (
        STOPPED_AT_KEY,
        STOPPED_BY_KEY,
        forward_signals_to_ranks,
    )

    try:
        with forward_signals_to_ranks(trainer):
            trainer.fit(
                module,
                datamodule=dm,
                ckpt_path=resolve_ckpt_path(cfg.ckpt_path, out_dir),
                weights_only=True,
            )
    except SIGTERMException:
        signum = next(c.stopped_by for c in trainer.callbacks if hasattr(c, "stopped_by"))
        _stopped_by_signal(signum, trainer.global_step)
    except FloatingPointError as err:  # too many non-finite losses in a row (lit/module.py)
        _too_many_bad_steps(str(err), cfg)
    except ProcessRaisedException as err:  # a spawned rank's error (trainer=ddp_sim)
        last = str(err).strip().splitlines()[-1]
        if last.startswith("FloatingPointError: "):
            _too_many_bad_steps(last.removeprefix("FloatingPointError: "), cfg)
        raise
    if STOPPED_BY_KEY in trainer.callback_metrics:  # spawned ranks stop without raising
        got = trainer.callback_metrics
        _stopped_by_signal(int(got[STOPPED_BY_KEY]), int(got[STOPPED_AT_KEY]))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        export_run(module, cfg, cfg.export_dir, data_subset=training_subset_record(dm, cfg))
        log.info("export written to %s", cfg.export_dir)
    trainer.strategy.barrier()
    _finish_wandb(trainer)
    return metrics


def _stopped_by_signal(signum: int | None, step: int) -> None:
    """Pre-empted (SIGTERM / SIGUSR1 / SIGUSR2): last.ckpt holds this step; no export of a half
    run."""
    log.warning(
        "stopped by signal %s at step %d; checkpoints/last.ckpt saved. Resume with the same "
        "run_name and ckpt_path=last",
        signum,
        step,
    )
    raise SystemExit(128 + int(signum or 15))


def _too_many_bad_steps(message: str, cfg: DictConfig) -> None:
    raise UserError(
        f"{message} Skipped steps are logged as train/skipped_steps; the limit is "
        f"max_bad_steps={cfg.max_bad_steps}"
    ) from None


def training_subset_record(dm, cfg: DictConfig) -> dict | None:
    """Fraction, seed, item-list fingerprint and the full data's fingerprint of what the run trained
    on."""
    if getattr(dm, "subset", None) is None:
        return None
    full = {k: v for k, v in dm.fingerprint().items() if k != "train_fraction"}
    vae = cfg.vae
    vae_data = (
        None
        if vae.get("name") == "none"
        else (f"other data (vae.path={vae.path})" if vae.get("path") else "this training subset")
    )
    return {**dm.subset, "data_fingerprint": full, "vae_data": vae_data}


def _finish_wandb(trainer) -> None:
    """Close the wandb run so multirun jobs do not share one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None:
                wandb.finish()


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    preflight("train", cfg)
    metrics = train(cfg)
    # Returned for Hydra sweepers (Optuna minimises val/loss).
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
