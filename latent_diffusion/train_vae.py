"""python -m latent_diffusion.train_vae data=... vae=f4: train a spectrogram VAE, export it.

compose -> instantiate data, module, loggers, trainer -> fit -> export
(diffusers folder + latent_stats.json + reconstructions.png, vae/export.py).
Under DDP every rank trains; only rank 0 exports, the others wait at a barrier.

`train_vae(cfg)` is the same stage as a function; `train_vae_for(cfg, out_dir)`
runs it from another entry point's config (the diffusion `train` calls it when
the configured VAE artifact is absent).
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_vae(cfg: DictConfig) -> Path:
    """Train the VAE described by cfg.vae on cfg.data and export it to cfg.out_dir."""
    from latent_diffusion.vae.export import export_vae

    if cfg.vae.get("module") is None:
        raise UserError(
            f"vae={cfg.vae.get('name')} loads an existing VAE and cannot be trained; "
            "choose vae=f4 or vae=f8 to train one"
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    if getattr(datamodule, "latents", "pixel") != "pixel":
        datamodule.latents = "pixel"  # the VAE trains on pixels, whatever the diffusion run uses
    if cfg.vae.get("batch_size"):
        datamodule.batch_size = int(
            cfg.vae.batch_size
        )  # the recipe's batch size, not the denoiser's
    module = hydra.utils.instantiate(
        cfg.vae.module,
        autoencoder={"in_channels": datamodule.channels, "sample_size": datamodule.image_size},
        _convert_="partial",
    )
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, default_root_dir=cfg.paths.output_dir
    )
    t0, c0 = time.time(), _cpu_seconds()
    trainer.fit(module, datamodule=datamodule)
    timing = {
        "steps": int(trainer.global_step),
        "train_wall_s": round(time.time() - t0, 1),
        # rank-0 process CPU time: on a shared machine the fair budget measure
        "train_cpu_s": round(_cpu_seconds() - c0, 1),
    }
    out_dir = Path(cfg.out_dir)
    if trainer.is_global_zero:
        train_ds = datamodule.dataset("train")
        export_vae(
            module.export_autoencoder(),
            out_dir,
            data_channels=datamodule.channels,
            train_batches=lambda: DataLoader(train_ds, batch_size=64, shuffle=False),
            data_fingerprint=datamodule.fingerprint(),
            val_dataset=datamodule.dataset("val"),
            per_channel=bool(cfg.vae.per_channel_stats),
            min_latents=int(cfg.vae.min_stats_latents),
            extra_metrics={
                "training": timing,
                "vae": OmegaConf.to_container(cfg.vae, resolve=True),
            },
            **radar_axes(datamodule, cfg.data),
        )
        report = cfg.get("report") or {}
        if report.get("domain_fid"):
            add_ceiling_report(out_dir, datamodule, report)
    trainer.strategy.barrier()  # the other ranks wait for rank 0's export
    return out_dir


def add_ceiling_report(out_dir: Path, datamodule, report) -> None:
    """metrics.json["domain_fid"]: the VAE ceiling against real vs real (metrics/vae_ceiling.py),
    with evaluate's domain classifier (its config in conf/evaluate.yaml, its cache)."""
    import json

    from latent_diffusion.metrics.vae_ceiling import vae_ceiling_fid
    from latent_diffusion.utils.io import atomic_write_json
    from latent_diffusion.vae.interface import FrozenVAE

    clf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "evaluate.yaml").classifier)
    clf.update(OmegaConf.to_container(report.get("classifier") or OmegaConf.create({})))
    vae = FrozenVAE.load(out_dir, datamodule.channels)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics["domain_fid"] = vae_ceiling_fid(vae, datamodule, clf, report.get("cache_dir"))
    atomic_write_json(out_dir / "metrics.json", metrics)


def radar_axes(datamodule, data_cfg) -> dict:
    """What the pixels mean, for the speckle and kinematic statistics (metrics/kinematics.py
    data_axes: the source's radar settings, else the data config's keys, else the
    simulator's) -> export_vae's `dynamic_range_db` and `kinematics`."""
    from latent_diffusion.metrics.kinematics import AXES_DEFAULTS, data_axes

    axes, defaulted = data_axes(datamodule.source, data_cfg)
    if defaulted:
        log.info(
            "the data does not say %s: metrics.json's speckle and envelope statistics assume "
            "the simulator's (its kinematics also give one Doppler row in m/s to compare with)",
            ", ".join(f"{k}={AXES_DEFAULTS[k]:g}" for k in defaulted),
        )
    return {
        "dynamic_range_db": axes["dynamic_range_db"],
        "kinematics": {
            "class_names": list(datamodule.class_names),
            "v_max": axes["v_max"],
            "duration_s": axes["duration_s"],
        },
    }


def train_vae_for(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Train the VAE of another entry point's cfg (its `data`, `vae`, `paths`) into out_dir.

    The trainer, logger and budget come from conf/train_vae.yaml (plus `overrides`),
    not from the caller's trainer: the VAE recipe carries its own step budget.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    if GlobalHydra.instance().is_initialized():
        vcfg = compose(config_name="train_vae", overrides=overrides)
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            vcfg = compose(config_name="train_vae", overrides=overrides)
    with open_dict(vcfg):
        vcfg.paths = OmegaConf.merge(vcfg.paths, cfg.paths)
        vcfg.paths.output_dir = str(Path(out_dir).parent / f"{Path(out_dir).name}_training")
        vcfg.data = cfg.data
        vcfg.vae = cfg.vae
        vcfg.out_dir = str(out_dir)
        vcfg.seed = cfg.get("seed", vcfg.seed)
        # a VAE trained on the way to a diffusion run: its ceiling FID is in that run's
        # `evaluate run=...` report, so the domain classifier is not trained twice here
        vcfg.report.domain_fid = False
    log.info("VAE ceiling FID: reported by `evaluate run=<this run>`, not at VAE export")
    return train_vae(vcfg)


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="train_vae")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("train_vae", cfg)
    out = train_vae(cfg)
    print(f"VAE exported to {out}")


if __name__ == "__main__":
    main()
