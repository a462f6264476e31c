"""Pre-flight checks: every entry point validates its whole configuration before any
expensive work (docs/reliability.md, bad-input matrix). `preflight(entry, cfg)` is the
one call each entry point makes; each concern lives in its own module:

  out_dirs.py     output folders: a file? writable? someone else's?
  numbers.py      numeric options in range (sizes, counts, threads, fractions, guidance)
  class_lists.py  class lists: no class twice
  vae_sizes.py    image sizes the VAE (however it arrives) and the UNet can take
  split_sizes.py  every split non-empty; classes too small for every split named
  notices.py      what the run will do differently from the config, said once up front
  optional_packages.py  loggers that need a package the project does not install

A failure is one UserError naming the key or file and the fix (exit code 2).
"""

from __future__ import annotations

import logging
import math

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation.class_lists import check_class_list
from latent_diffusion.validation.notices import train_vae_notices
from latent_diffusion.validation.numbers import ABSENT, check_ranges, select
from latent_diffusion.validation.optional_packages import check_logger_packages
from latent_diffusion.validation.out_dirs import check_out_dir
from latent_diffusion.validation.split_sizes import check_splits
from latent_diffusion.validation.vae_sizes import check_sizes

log = logging.getLogger(__name__)

# guidance beyond this saturates every sample (ADM / CFG papers use 1-10)
GUIDANCE_WARN = 30.0


def _data_rules(p: str) -> list[tuple[str, str]]:
    return [
        (f"{p}.batch_size", "count"),
        (f"{p}.eval_batch_size", "count"),
        (f"{p}.num_workers", "count0"),
        (f"{p}.n_per_class", "count"),
        (f"{p}.val_per_class", "count0"),
        (f"{p}.test_per_class", "count0"),
        (f"{p}.workers", "count0"),
        (f"{p}.val_fraction", "fraction"),
        (f"{p}.test_fraction", "fraction"),
        (f"{p}.dynamic_range_db", "positive"),
        (f"{p}.max_residual", "nonneg"),
        (f"{p}.seed", "int"),
        *[
            (f"{p}.radar.{k}", "positive")
            for k in ("carrier_hz", "prf_hz", "duration_s", "window_s", "v_max", "dynamic_range_db")
        ],
    ]


def _data_nullable(p: str) -> tuple[str, ...]:
    return (
        f"{p}.eval_batch_size",
        f"{p}.val_per_class",
        f"{p}.test_per_class",
        f"{p}.workers",
        *[
            f"{p}.radar.{k}"
            for k in ("carrier_hz", "prf_hz", "duration_s", "window_s", "v_max", "dynamic_range_db")
        ],
    )


def _check_data(cfg, p: str = "data") -> None:
    check_ranges(cfg, _data_rules(p), nullable=_data_nullable(p))
    vf, tf = select(cfg, f"{p}.val_fraction", 0.0), select(cfg, f"{p}.test_fraction", 0.0)
    if isinstance(vf, float | int) and isinstance(tf, float | int) and vf + tf >= 1:
        raise UserError(
            f"{p}.val_fraction={vf} + {p}.test_fraction={tf} >= 1 leaves the training split empty; "
            "keep their sum below 1 (e.g. 0.1 and 0.1)"
        )
    check_class_list(cfg, f"{p}.classes")
    raw = select(cfg, f"{p}.raw", None)
    if raw is not None and raw.get("enabled"):  # data=raw_radar: every data.raw key, up front
        from omegaconf import OmegaConf

        from latent_diffusion.data.raw_radar import RawRadar

        RawRadar.make(OmegaConf.to_container(raw, resolve=True))
    check_splits(cfg, p)


def _train(cfg) -> None:
    _check_data(cfg)
    check_ranges(
        cfg,
        [
            ("trainer.max_steps", "count"),
            ("warmup_steps", "count0"),
            ("ema_decay", "decay"),
            ("max_bad_steps", "count"),
            ("seed", "int"),
            ("optimizer.lr", "positive"),
            ("optimizer.weight_decay", "nonneg"),
            ("trainer.accumulate_grad_batches", "count"),
            ("model.base_channels", "count"),
            ("model.num_res_blocks", "count"),
            ("model.dropout", "fraction"),
            ("model.p_uncond", "fraction"),
            ("diffusion.timesteps", "count"),
        ],
    )
    interval = select(cfg, "trainer.val_check_interval")
    if interval is not ABSENT and not (
        (isinstance(interval, int) and interval >= 1)
        or (isinstance(interval, float) and 0 < interval <= 1)
    ):
        raise UserError(
            f"trainer.val_check_interval={interval!r}: must be a step count >= 1 "
            "(or a fraction of an epoch in (0, 1])"
        )
    check_sizes(cfg, "data.image_size", model=True)
    check_logger_packages(cfg)
    check_out_dir(select(cfg, "paths.output_dir", None), "paths.output_dir")
    check_out_dir(select(cfg, "export_dir", None), "export_dir", ours=("export.json",))
    check_out_dir(select(cfg, "paths.cache_dir", None), "paths.cache_dir")


def _train_vae(cfg) -> None:
    check_logger_packages(cfg)
    _check_data(cfg)
    check_ranges(
        cfg,
        [
            ("vae.max_steps", "count"),
            ("vae.batch_size", "count"),
            ("vae.min_stats_latents", "count"),
            ("vae.val_check_interval", "count"),
            ("vae.module.num_threads", "count"),
            ("vae.module.lr", "positive"),
            ("vae.module.spectral_weight", "nonneg"),
            ("vae.module.gan_weight", "nonneg"),
            ("vae.module.gan_start_step", "count0"),
            ("vae.module.ema_decay", "decay"),
            ("seed", "int"),
        ],
        nullable=("vae.batch_size", "vae.module.num_threads", "vae.module.ema_decay"),
    )
    check_sizes(cfg, "data.image_size", model=False)
    check_out_dir(select(cfg, "out_dir", None), "out_dir", ours=("latent_stats.json",))
    check_out_dir(select(cfg, "paths.cache_dir", None), "paths.cache_dir")
    train_vae_notices(cfg)


def _simulate(cfg) -> None:
    check_ranges(
        cfg,
        [
            ("n_per_class", "count"),
            ("image_size", "count"),
            ("seed", "int"),
            ("workers", "count0"),
            ("preview_per_class", "count0"),
            *[
                (f"radar.{k}", "positive")
                for k in (
                    "carrier_hz",
                    "prf_hz",
                    "duration_s",
                    "window_s",
                    "v_max",
                    "dynamic_range_db",
                )
            ],
        ],
        nullable=(
            "workers",
            *[
                f"radar.{k}"
                for k in (
                    "carrier_hz",
                    "prf_hz",
                    "duration_s",
                    "window_s",
                    "v_max",
                    "dynamic_range_db",
                )
            ],
        ),
    )
    check_class_list(cfg, "classes")
    # whose folder it is: simulate's own first check (utils.io.check_replaceable)
    check_out_dir(select(cfg, "out_dir", None), "out_dir")


def _sample(cfg) -> None:
    check_ranges(
        cfg,
        [
            ("n_per_class", "count"),
            ("batch_size", "count"),
            ("threads", "count"),
            ("seed", "int"),
            ("guidance", "finite"),
            ("eta", "nonneg"),
        ],
        nullable=("threads",),
    )
    guidance = select(cfg, "guidance")
    if isinstance(guidance, int | float) and math.isfinite(guidance) and guidance > GUIDANCE_WARN:
        log.warning(
            "guidance=%g is far above the useful range (1-10): samples saturate to the class mode",
            guidance,
        )
    check_class_list(cfg, "classes")
    # whose folder it is: sample's own check (utils.io.check_replaceable), before any model loads
    check_out_dir(select(cfg, "out_dir", None), "out_dir")


def _evaluate(cfg) -> None:
    _check_data(cfg, "real")
    check_ranges(
        cfg,
        [
            ("real.image_size", "count"),
            ("num_threads", "count"),
            ("min_samples", "count"),
            ("seed", "int"),
            ("classifier.width", "count"),
            ("classifier.steps", "count"),
            ("classifier.batch_size", "count"),
            ("classifier.lr", "positive"),
            ("classifier.weight_decay", "nonneg"),
            ("protocol.steps", "count"),
            ("augmentation.fractions", "share"),
            ("augmentation.multipliers", "nonneg"),
            ("augmentation.seeds", "int"),
            ("distances.k", "count"),
            ("distances.kid_subsets", "count"),
            ("distances.max_n", "count"),
            ("distances.min_per_class", "count"),
        ],
        nullable=("real.image_size", "num_threads", "distances.max_n"),
    )
    check_out_dir(select(cfg, "out_dir", None), "out_dir", ours=("metrics.json",), task="evaluate")
    check_out_dir(select(cfg, "cache_dir", None), "cache_dir")


def _bench(cfg) -> None:
    check_ranges(
        cfg,
        [
            ("threads", "count"),
            ("repeats", "count"),
            ("warmup", "count0"),
            ("image_size", "count"),
            ("pool_size", "count"),
            ("batch_size", "count"),
        ],
        nullable=("threads",),
    )
    size = select(cfg, "image_size", None)
    blocks = select(cfg, "vae_arch.block_out_channels", None)
    if isinstance(size, int) and blocks and size % 2 ** (len(blocks) - 1):
        f = 2 ** (len(blocks) - 1)
        raise UserError(
            f"image_size={size} is not divisible by {f}, the bench VAE's down-sampling factor; "
            f"use a multiple of {f} (64 or 128)"
        )
    check_out_dir(select(cfg, "out_dir", None), "out_dir", ours=("bench.json",), task="bench")


def _inspect(cfg) -> None:
    _check_data(cfg)
    check_ranges(cfg, [("preview_per_class", "count")])
    check_out_dir(
        select(cfg, "out_dir", None), "out_dir", ours=("data_summary.json",), task="inspect"
    )


def _train_classifier(cfg) -> None:
    check_logger_packages(cfg)
    if not select(cfg, "denoiser_run", None):  # else the data config is the denoiser run's
        _check_data(cfg)
        check_sizes(cfg, "data.image_size")
    check_ranges(
        cfg,
        [
            ("trainer.max_steps", "count"),
            ("warmup_steps", "count0"),
            ("ema_decay", "decay"),
            ("seed", "int"),
            ("optimizer.lr", "positive"),
            ("optimizer.weight_decay", "nonneg"),
            ("small_t_power", "nonneg"),
            ("latent_noise", "nonneg"),
            ("val_buckets", "count"),
        ],
    )
    check_out_dir(select(cfg, "paths.output_dir", None), "paths.output_dir")
    check_out_dir(
        select(cfg, "export_dir", None),
        "export_dir",
        ours=("classifier.json",),
        task="train_classifier",
    )


def _distill(cfg) -> None:
    check_logger_packages(cfg)
    if str(select(cfg, "run", "???")) in ("", "???", "None"):
        raise UserError("run is not set: pass run=<the teacher's training run dir or its export/>")
    check_ranges(
        cfg,
        [
            ("trainer.max_steps", "count"),
            ("warmup_steps", "count0"),
            ("ema_decay", "decay"),
            ("target_decay", "decay"),
            ("student_dropout", "fraction"),
            ("seed", "int"),
            ("optimizer.lr", "positive"),
            ("grid_points", "count"),
            ("default_steps", "count"),
            ("batch_size", "count"),
        ],
        nullable=("batch_size",),
    )
    if select(cfg, "latents", "cached") not in ("cached", "online"):
        raise UserError(f"latents={select(cfg, 'latents', None)}: use cached or online")
    check_out_dir(select(cfg, "paths.output_dir", None), "paths.output_dir")
    check_out_dir(
        select(cfg, "export_dir", None), "export_dir", ours=("export.json",), task="distill"
    )


def _study(cfg) -> None:
    check_ranges(cfg, [("recipe.steps_per_image", "positive"), ("recipe.min_steps", "count")])
    fractions = select(cfg, "fractions", [])
    bad = [f for f in fractions if not isinstance(f, int | float) or not 0 < f <= 1]
    if bad or not fractions:
        raise UserError(f"fractions={list(fractions)}: each must be a number in (0, 1]")
    for key in ("seeds", "multipliers"):
        vals = list(select(cfg, key, []) or [])
        if not vals or any(not isinstance(v, int) or v < 0 for v in vals):
            raise UserError(f"{key}={vals}: give a non-empty list of integers >= 0")
        if len(set(vals)) != len(vals):
            raise UserError(f"{key}={vals}: an entry is listed twice")
    if str(select(cfg, "study_dir", "???")) in ("", "???", "None"):
        raise UserError("study_dir is not set: pass study_dir=DIR (a new folder, or one to resume)")
    check_out_dir(select(cfg, "study_dir", None), "study_dir")
    _study_student(cfg)


def _study_student(cfg) -> None:
    """The student's settings, checked before the first cell's generator trains for half an
    hour: distill's own checks would come only after it."""
    if select(cfg, "student", None) is None:
        return
    check_ranges(
        cfg,
        [
            ("student.steps", "count"),
            ("student.max_steps", "count"),
            ("student.batch_size", "count"),
        ],
        nullable=("student.batch_size",),
    )
    from pathlib import Path

    from omegaconf import OmegaConf

    # distill's own limits, read where distill keeps them
    d = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "distill.yaml")
    k, grid = select(cfg, "student.steps"), int(d.grid_points)
    if k is ABSENT or k > grid:
        raise UserError(
            f"student.steps={None if k is ABSENT else k}: give the student's step count K in "
            f"[1, {grid}] (distill's grid_points), e.g. student.steps=8"
        )
    if select(cfg, "student.max_steps") is ABSENT:
        raise UserError("student.max_steps is not set: the distillation's budget, e.g. 1000")
    w, (lo, hi) = select(cfg, "sample.guidance", 3.0), d.guidance_range
    if not lo <= float(w) <= hi:
        raise UserError(
            f"sample.guidance={w}: a student samples with w in its training range [{lo:g}, {hi:g}] "
            "(distill's guidance_range)"
        )


CHECKS = {
    "inspect": _inspect,
    "train_classifier": _train_classifier,
    "distill": _distill,
    "study": _study,
    "train": _train,
    "train_vae": _train_vae,
    "simulate": _simulate,
    "sample": _sample,
    "evaluate": _evaluate,
    "bench": _bench,
}


def preflight(entry: str, cfg) -> None:
    """All of `entry`'s checks on its composed config; raises the first UserError."""
    CHECKS[entry](cfg)


__all__ = [
    "preflight",
    "check_out_dir",
    "check_ranges",
    "check_class_list",
    "check_sizes",
    "check_splits",
]
