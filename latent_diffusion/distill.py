"""python -m latent_diffusion.distill run=outputs/train/<run>

A trained run (the teacher) -> a guidance-distilled consistency student that samples in K
steps with one forward each (diffusion/consistency.py has the method and why):

teacher export (its data, VAE, schedule, seed) -> cached latents -> student initialised from
the teacher + zero-initialised guidance embedding -> Trainer.fit (consistency distillation,
target network, EMA) -> export/ (a normal export with a `distilled` record) + student_grid.png.

`sample run=<this run>` then samples the student with sampler=lcm and its default K, and
`guidance=W` picks w inside the distilled range without a second forward.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)

METHOD = "latent consistency distillation (Luo et al. 2023), w-conditioned (Meng et al. 2023)"


# ------------------------------------------------------------------ the teacher
def check_teacher(meta: dict, path) -> None:
    """Refuse a teacher this method cannot distil, before any data or weights are read."""
    if meta.get("distilled"):
        raise UserError(
            f"run={path} is already a distilled student (sampler=lcm); distil its teacher "
            f"({meta['distilled'].get('teacher', {}).get('export')}) instead"
        )
    model = meta.get("model") or {}
    if model.get("arch", "adm_unet") != "adm_unet":
        raise UserError(
            f"run={path} is a {model.get('arch')} model; distill supports the ADM UNet "
            "(model=tiny|small|base), whose class embedding carries the guidance embedding"
        )
    if not float(model.get("p_uncond", 0) or 0) > 0:
        raise UserError(
            f"run={path} was trained without classifier-free guidance (model.p_uncond="
            f"{model.get('p_uncond')}): its null class never learned the unconditional model "
            "that guided distillation needs. Train the teacher with model.p_uncond=0.1 (the "
            "default) and distil that run"
        )
    if not (Path(path) / "config.yaml").is_file():
        raise UserError(
            f"run={path}: {Path(path) / 'config.yaml'} is missing, so the teacher's data config "
            "is unknown; use the export folder the training run wrote"
        )


def check_config(cfg: DictConfig, num_timesteps: int) -> list[int]:
    """steps, default_steps, grid_points, guidance_range, loss -> the sorted K list."""
    from latent_diffusion.diffusion.consistency import inference_timesteps, skipping_grid

    grid = skipping_grid(num_timesteps, cfg.grid_points)
    steps = list(cfg.steps) if OmegaConf.is_list(cfg.steps) else [cfg.steps]
    if not steps:
        raise UserError("steps=[]: list the K to check the student at, e.g. steps=[8,4,2,1]")
    for k in steps:
        try:
            inference_timesteps(grid, k)
        except UserError:
            raise UserError(
                f"steps={steps}: K={k!r} is not a step count the student can take; each K must "
                f"be an integer in [1, {len(grid)}] (grid_points={cfg.grid_points})"
            ) from None
    if cfg.default_steps not in steps:
        raise UserError(f"default_steps={cfg.default_steps} is not one of steps={steps}")
    rng = list(cfg.guidance_range) if OmegaConf.is_list(cfg.guidance_range) else []
    numbers = len(rng) == 2 and all(isinstance(v, int | float) for v in rng)
    if not numbers or not 0 <= rng[0] < rng[1]:
        raise UserError(
            f"guidance_range={cfg.guidance_range}: give [lo, hi] with 0 <= lo < hi, e.g. [1, 8]"
        )
    if cfg.loss not in ("huber", "l2"):
        raise UserError(f"loss={cfg.loss!r}: use huber (LCM's pseudo-Huber) or l2")
    return sorted({int(k) for k in steps}, reverse=True)


def adopt_teacher_run(cfg: DictConfig, export: Path) -> None:
    """The teacher's data, VAE, diffusion and seed replace ours; its latents are cached."""
    run_cfg = OmegaConf.load(export / "config.yaml")
    with open_dict(cfg):
        cfg.data = run_cfg.data
        cfg.vae = run_cfg.vae
        cfg.diffusion = run_cfg.diffusion
        cfg.seed = run_cfg.seed
        if cfg.data.get("latents") != "pixel":
            cfg.data.latents = cfg.latents
        if cfg.get("batch_size"):
            cfg.data.batch_size = int(cfg.batch_size)
    log.info(
        "teacher %s: its data, VAE, latent statistics, schedule and seed are used; latents %s",
        export,
        cfg.data.get("latents"),
    )


def build_student(teacher, dropout: float) -> tuple[torch.nn.Module, dict]:
    """The teacher's architecture + a guidance embedding, the teacher's weights -> (student,
    its model config). No label drop: the student always sees a class and a w."""
    from latent_diffusion.models import build_denoiser

    config = {
        **teacher.denoiser_config,
        "p_uncond": 0.0,
        "dropout": float(dropout),
        "guidance_embed_dim": int(teacher.denoiser_config["base_channels"]),
    }
    student = build_denoiser(**config)
    missing, unexpected = student.unet.load_state_dict(teacher.unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.guidance.") for k in missing):
        raise AssertionError(f"student vs teacher weights: missing {missing}, extra {unexpected}")
    return student.train(), config


# ------------------------------------------------------------------ the run
def build(cfg: DictConfig):
    """(datamodule, module, trainer, teacher pipeline, sorted K list) from the config."""
    from latent_diffusion.lit.distill_module import ConsistencyDistillation
    from latent_diffusion.pipeline import LatentDiffusionPipeline, read_export_meta
    from latent_diffusion.train import build_trainer, latent_space
    from latent_diffusion.utils.io import file_hash

    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise UserError("run is not set: pass run=<the teacher's training run dir or its export/>")
    export, meta = read_export_meta(cfg.run)
    check_teacher(meta, export)
    ks = check_config(cfg, int(meta["diffusion"]["timesteps"]))
    torch.set_float32_matmul_precision(cfg.torch.matmul_precision)
    adopt_teacher_run(cfg, export)
    teacher = LatentDiffusionPipeline.from_pretrained(export)  # eval, frozen, VAE hash-checked
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    latent_shape = latent_space(cfg, dm, teacher.vae)  # builds / reads the latent cache
    if list(dm.class_names) != teacher.class_names or tuple(latent_shape) != teacher.latent_shape:
        raise UserError(
            f"run={cfg.run}: its data now gives classes {dm.class_names} and latents "
            f"{latent_shape}, the export says {teacher.class_names} and {teacher.latent_shape}; "
            "the data folder changed since the teacher was trained"
        )
    L.seed_everything(cfg.seed, workers=True)
    student, student_config = build_student(teacher.denoiser, cfg.student_dropout)
    log.info(
        "student: the teacher's %s UNet + a guidance embedding (%.2fM parameters), grid of %d "
        "points, w in %s, checked at K = %s",
        meta["model"].get("name"),
        student.num_params / 1e6,
        cfg.grid_points,
        list(cfg.guidance_range),
        ks,
    )
    module = ConsistencyDistillation(
        student=student,
        teacher=teacher.denoiser,
        diffusion=teacher.diffusion,
        optimizer=instantiate(cfg.optimizer),
        class_names=teacher.class_names,
        latent_shape=latent_shape,
        guidance_range=tuple(cfg.guidance_range),
        vae=teacher.vae,
        grid_points=int(cfg.grid_points),
        target_decay=float(cfg.target_decay),
        ema_decay=float(cfg.ema_decay),
        warmup_steps=int(cfg.warmup_steps),
        loss=str(cfg.loss),
        seed=int(cfg.seed),
    )
    # what the student's weights mean: a checkpoint of another teacher or setting is refused
    signature = {
        "teacher_weights": file_hash(export / "denoiser" / "diffusion_pytorch_model.safetensors"),
        "class_names": list(teacher.class_names),
        "latent_shape": list(latent_shape),
        "model": student_config,
        "grid_points": int(cfg.grid_points),
        "guidance_range": [float(v) for v in cfg.guidance_range],
        "loss": str(cfg.loss),
    }
    trainer = build_trainer(cfg, signature)
    record = {
        "method": METHOD,
        "sampler": "lcm",
        "steps": ks,
        "default_steps": int(cfg.default_steps),
        "grid_points": int(cfg.grid_points),
        "guidance_range": [float(v) for v in cfg.guidance_range],
        "teacher_solver": "ddim",
        "loss": str(cfg.loss),
        "target_decay": float(cfg.target_decay),
        "teacher": {
            "export": str(export.resolve()),
            "global_step": meta.get("global_step"),
            "weights_hash": signature["teacher_weights"],
        },
    }
    return dm, module, trainer, teacher, record


def export_student(module, cfg: DictConfig, teacher, record: dict) -> Path:
    """The EMA student as a pipeline folder: the teacher's export.json with the student's
    model config, its step count and the `distilled` record."""
    from latent_diffusion.pipeline import LatentDiffusionPipeline

    base = {k: v for k, v in teacher.config.items() if k not in ("version", "vae")}
    config = {**base, "model": {**teacher.config["model"], **module.student.denoiser_config}}
    with module.ema.swap_into(module.student):
        pipe = LatentDiffusionPipeline(
            module.student.eval(), module.diffusion, module.class_names, module.latent_shape,
            module.vae, config,
        )  # fmt: skip
        return pipe.save_pretrained(
            cfg.export_dir,
            OmegaConf.to_yaml(cfg, resolve=True),
            global_step=int(module.global_step),
            ema_decay=float(module.ema.decay),
            distilled={**record, "distill_steps": int(module.global_step)},
        )


def student_grid(export_dir: Path, ks: list[int], out: Path, seed: int = 0) -> Path:
    """One row per (class, K) at the default guidance, the same noise seed per column: how
    the student looks at each step count."""
    from latent_diffusion.lit.grid import class_grid
    from latent_diffusion.pipeline import DEFAULT_GUIDANCE, LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(export_dir)
    lo, hi = pipe.config["distilled"]["guidance_range"]
    w = float(np.clip(DEFAULT_GUIDANCE, lo, hi))
    rows, labels = [], []
    for c, name in enumerate(pipe.class_names):
        for k in ks:
            out_k = pipe([c] * 4, num_inference_steps=k, guidance_scale=w, seed=seed,
                         output_type="uint8")  # fmt: skip
            rows.append(out_k.images)
            labels.append(f"{name[:6]} K={k}")
    class_grid(np.concatenate(rows), labels, n_cols=4, label_width=72).save(out)
    return out


def distill(cfg: DictConfig) -> dict:
    from latent_diffusion.train import resolve_ckpt_path

    out_dir = Path(cfg.paths.output_dir)
    dm, module, trainer, teacher, record = build(cfg)
    # the target network is in eval mode on purpose (no dropout in the regression targets)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    trainer.fit(
        module,
        datamodule=dm,
        ckpt_path=resolve_ckpt_path(cfg.ckpt_path, out_dir),
        weights_only=True,
    )
    metrics = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        export = export_student(module, cfg, teacher, {**record, "validation": metrics})
        grid = student_grid(export, record["steps"], out_dir / "student_grid.png", int(cfg.seed))
        log.info("student export written to %s; grid %s", export, grid)
    trainer.strategy.barrier()
    return metrics


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="distill")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    preflight("distill", cfg)
    return distill(cfg).get("val/loss")


if __name__ == "__main__":
    main()
