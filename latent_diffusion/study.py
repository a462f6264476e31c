"""python -m latent_diffusion.study dataset=microdoppler_hard study_dir=D: the leak-free
augmentation study.

One cell = (real fraction F, seed S):
  train     `train data.fraction=F data.fraction_seed=S seed=S` + the small-data recipe scaled
            with the subset size (recipe_overrides); its VAE trains on the same subset
  distill   only with `student`: latent consistency distillation of the cell's generator on
            the same subset's latents (docs/sampling.md); the student then draws the samples
  sample    max(multipliers) x (real images per class) generated images per class
  evaluate  parts classifier, augmentation, memorisation: classifiers on exactly the generator's
            subset (classifier seed S) - real only, real + classical, real + m x synthetic,
            real + m x synthetic + classical, and the same with sifted samples
Each step runs as its own process (as a user would run it) and leaves its folder under
D/cells/f<F>-s<S>/; a finished cell writes cell.json and is never recomputed, a cell
cut short resumes (train with ckpt_path=last). D/study.json fixes the configuration:
another one is refused, naming the keys that differ (more fractions or seeds are allowed).
The aggregate: mean +- std over seeds per arm and fraction, the paired difference to
real only with a 95% Student-t interval, and memorisation per fraction.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.utils.io import atomic_write_json
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)
IDENTITY = (
    "dataset",
    "data_overrides",
    "multipliers",
    "train_overrides",
    "recipe",
    "sample",
    "student",
    "evaluate_overrides",
    "classical",
    "sift",
)


def identity(cfg: DictConfig) -> dict:
    """What makes two studies comparable cell by cell (fractions and seeds may grow)."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in IDENTITY
    }


def _flat(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_study_dir(study_dir: Path, ident: dict) -> None:
    """Write study.json on first use; refuse a folder whose study.json differs, naming the keys."""
    path = study_dir / "study.json"
    if not path.is_file():
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, ident)
        return
    old = json.loads(path.read_text())
    a, b = _flat(old), _flat(ident)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff[:5])
        raise UserError(
            f"study_dir={study_dir} holds a study with another configuration ({shown}). Use a new "
            "study_dir, or the same settings to resume; cells of two configurations are never mixed"
        )


def recipe_overrides(recipe: DictConfig, n_images: int) -> list[str]:
    """The small-data recipe for a subset of n_images real training images (train overrides)."""
    r = recipe
    steps = int(min(r.max_steps, max(r.min_steps, r.steps_per_image * n_images)))
    every = max(10, steps // max(1, int(r.validations)))
    out = [
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={every}",
        f"warmup_steps={min(200, steps // 10)}",
    ]
    if r.get("vae_steps_per_image"):
        vsteps = int(min(r.vae_max_steps, max(r.vae_min_steps, r.vae_steps_per_image * n_images)))
        out.append(f"vae.max_steps={vsteps}")
        if r.get("vae_batch_size"):
            out.append(f"vae.batch_size={int(r.vae_batch_size)}")
    if n_images < int(r.small_below):
        out.append(f"model.dropout={float(r.dropout)}")
        for k, v in (r.get("augment") or {}).items():
            out.append(f"data.augment.{k}={v}")
    if r.get("early_stopping_patience"):
        out += [
            "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
            "+callbacks.early_stopping.monitor=val/loss",
            "+callbacks.early_stopping.mode=min",
            f"+callbacks.early_stopping.patience={int(r.early_stopping_patience)}",
        ]
    return out


def cell_name(f: float, s: int) -> str:
    return f"f{f:g}-s{int(s)}"


def _run(args: list[str], python: str, log_file: Path) -> None:
    cmd = [python, "-m", *args]
    log.info("  $ %s", " ".join(cmd))
    with open(log_file, "a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-5:]
        raise UserError(
            f"{args[0]} failed (exit {proc.returncode}) for this cell; its log is {log_file}. "
            f"Last lines: {' | '.join(tail)}. Fix it and rerun the same command to resume"
        )


def run_cell(cfg: DictConfig, f: float, s: int, folder: Path) -> dict:
    """Train, sample and evaluate one (fraction, seed) cell; each step is skipped when its output
    exists."""
    python = cfg.python or sys.executable
    folder.mkdir(parents=True, exist_ok=True)
    logf = folder / "log.txt"
    data = [f"data.{o}" for o in cfg.data_overrides]
    train_dir = folder / "train"
    if not (train_dir / "export" / "export.json").is_file():
        n_images = _subset_size(cfg, f, s, data)  # the subset size decides the recipe
        _run(
            [
                "latent_diffusion.train",
                f"data={cfg.dataset}",
                *data,
                f"data.fraction={f}",
                f"data.fraction_seed={s}",
                f"seed={s}",
                *cfg.train_overrides,
                *recipe_overrides(cfg.recipe, n_images),
                "run_name=cell",
                f"hydra.run.dir={train_dir}",
                "ckpt_path=last",
                f"paths.cache_dir={cfg.paths.cache_dir}",
            ],
            python,
            logf,
        )
    export = json.loads((train_dir / "export" / "export.json").read_text())
    per_class = max(export["data_subset"]["per_class"].values())
    generator, sampler, steps = train_dir, cfg.sample.sampler, cfg.sample.steps
    if cfg.get("student"):
        generator, sampler, steps = distil_cell(cfg, train_dir, folder, s, python, logf)
    gen_dir = folder / "samples"
    if not (gen_dir / "metadata.json").is_file():
        n = max(int(m) for m in cfg.multipliers) * per_class
        sm = cfg.sample
        _run(
            [
                "latent_diffusion.sample",
                f"run={generator}",
                f"out_dir={gen_dir}",
                f"n_per_class={n}",
                f"sampler={sampler}",
                f"steps={steps}",
                f"guidance={sm.guidance}",
                f"seed={s}",
                f"hydra.run.dir={folder / 'sample_log'}",
            ],
            python,
            logf,
        )
    eval_dir = folder / "evaluate"
    if not (eval_dir / "metrics.json").is_file():
        classical = (
            "{" + ",".join(f"{k}:{v}" for k, v in cfg.classical.items()) + "}"
            if cfg.classical
            else "null"
        )
        _run(
            [
                "latent_diffusion.evaluate",
                f"real={cfg.dataset}",
                *[f"real.{o}" for o in cfg.data_overrides],
                f"generated={gen_dir}",
                f"run={generator}",
                f"out_dir={eval_dir}",
                "parts=[classifier,augmentation,memorisation]",
                f"augmentation.seeds=[{s}]",
                f"augmentation.multipliers=[0,{','.join(str(int(m)) for m in cfg.multipliers)}]",
                f"augmentation.classical={classical}",
                f"sift.enabled={str(bool(cfg.sift)).lower()}",
                "min_samples=2",
                f"hydra.run.dir={folder / 'evaluate_log'}",
                f"cache_dir={cfg.paths.cache_dir}/evaluate",
                f"paths.cache_dir={cfg.paths.cache_dir}",
                *cfg.evaluate_overrides,
            ],
            python,
            logf,
        )
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {
        "fraction": f,
        "seed": s,
        "generator_data": m.get("generator_data"),
        "augmentation": m["augmentation"][str(float(f))]
        if str(float(f)) in m["augmentation"]
        else next(iter(m["augmentation"].values())),
        "augmentation_sifted": next(iter(m["augmentation_sifted"].values()))
        if "augmentation_sifted" in m
        else None,
        "sifting": m.get("sifting"),
        "memorisation": m.get("memorisation"),
        "cas": m.get("cas", {}).get("accuracy"),
        "trtr": m.get("trtr", {}).get("accuracy"),
        "train_steps": export.get("global_step"),
        "sampler": {"run": generator.name, "sampler": sampler, "steps": int(steps)},
    }


def distil_cell(
    cfg: DictConfig, train_dir: Path, folder: Path, s: int, python: str, logf: Path
) -> tuple[Path, str, int]:
    """Distil the cell's generator into a K-step student (skipped when its export exists; a
    cut-short distillation resumes) -> (the student's run dir, "lcm", K)."""
    st = cfg.student
    k = int(st.steps)
    student_dir = folder / "student"
    if not (student_dir / "export" / "export.json").is_file():
        max_steps = int(st.max_steps)
        _run(
            [
                "latent_diffusion.distill",
                f"run={train_dir}",
                f"steps=[{k}]",
                f"default_steps={k}",
                f"trainer.max_steps={max_steps}",
                f"trainer.val_check_interval={max(10, max_steps // 4)}",
                f"batch_size={st.get('batch_size') or 'null'}",
                f"seed={s}",
                "run_name=student",
                f"hydra.run.dir={student_dir}",
                "ckpt_path=last",
                f"paths.cache_dir={cfg.paths.cache_dir}",
                *(st.get("overrides") or []),
            ],
            python,
            logf,
        )
    return student_dir, "lcm", k


def _subset_size(cfg, f, s, data_args: list[str]) -> int:
    """Real training images in the (f, s) subset, drawn as train will draw it (compose + setup)."""
    from hydra import compose
    from hydra.utils import instantiate

    c = compose(
        "train",
        overrides=[
            f"data={cfg.dataset}",
            *data_args,
            f"data.fraction={f}",
            f"data.fraction_seed={s}",
            f"paths.cache_dir={cfg.paths.cache_dir}",
        ],
    )
    dm = instantiate(c.data)
    dm.setup()
    return int(dm.subset["n"])


def aggregate(cells: list[dict]) -> dict:
    """Per fraction and arm: mean +- std over seeds, paired difference to real only with a 95%
    interval."""
    from latent_diffusion.metrics.protocol import paired_difference

    out: dict = {}
    for f in sorted({c["fraction"] for c in cells}):
        cs = sorted((c for c in cells if c["fraction"] == f), key=lambda c: c["seed"])
        row: dict = {"seeds": [c["seed"] for c in cs], "arms": {}, "paired": {}}
        for key, suffix in (("augmentation", ""), ("augmentation_sifted", " (sifted)")):
            if any(c.get(key) is None for c in cs):
                continue
            arms = list(cs[0][key]["accuracy"])
            for a in arms:
                if suffix and a in ("0", "classical"):
                    continue  # the same classifiers as without sifting
                acc = [float(np.mean(c[key]["accuracy"][a]["runs"])) for c in cs]
                row["arms"][a + suffix] = {
                    "mean": float(np.mean(acc)),
                    "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                    "runs": acc,
                }
        base = row["arms"]["0"]["runs"]
        for a, v in row["arms"].items():
            if a != "0":
                row["paired"][a] = paired_difference(v["runs"], base)
        mem = [c["memorisation"]["pixel"] for c in cs if c.get("memorisation")]
        if mem:
            row["memorisation"] = {
                "ratio": float(np.mean([m_["ratio"] for m_ in mem])),
                "frac_copies": float(np.mean([m_["frac_copies"] for m_ in mem])),
            }
        row["leaky"] = any(c["augmentation"].get("leak", {}).get("leaky") for c in cs)
        row["n_real"] = [c["generator_data"]["n"] for c in cs if c.get("generator_data")]
        out[str(f)] = row
    return out


def table_markdown(agg: dict) -> str:
    from latent_diffusion.metrics.protocol import arm_label

    arms = list(dict.fromkeys(a for row in agg.values() for a in row["arms"]))

    def label(a: str) -> str:
        return arm_label(a.replace(" (sifted)", "")) + (" (sifted)" if "(sifted)" in a else "")

    L = [
        "| real fraction (images) | seeds | "
        + " | ".join(label(a) for a in arms)
        + " | memorisation ratio / copies |",
        "|---|---|" + "---|" * (len(arms) + 1),
    ]
    for f, row in agg.items():
        cells = []
        for a in arms:
            v = row["arms"].get(a)
            if v is None:
                cells.append("")
                continue
            txt = f"{v['mean']:.3f} +- {v['std']:.3f}"
            if a != "0":
                d = row["paired"][a]
                ci = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d.get("ci95") else ""
                txt += f"<br>{d['mean']:+.3f}{ci}"
            cells.append(txt)
        mem = row.get("memorisation")
        n = f" ({row['n_real'][0]})" if row.get("n_real") else ""
        mem_txt = f"{mem['ratio']:.2f} / {mem['frac_copies']:.2f}" if mem else ""
        L.append(
            f"| {float(f):.0%}{n}{' LEAKY' if row['leaky'] else ''} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {mem_txt} |"
        )
    L += [
        "",
        "Each cell: real test accuracy mean +- std over seeds; below it the paired difference to "
        "real only "
        "(same subset and classifier seed) with its 95% Student-t interval. Memorisation: median "
        "nearest-training-image distance of generated over real test images (pixels), and the "
        "share of "
        "generated images closer to a training image than the real test set's 1st percentile.",
    ]
    return "\n".join(L) + "\n"


def run_study(
    cfg: DictConfig, runner: Callable[[DictConfig, float, int, Path], dict] = run_cell
) -> dict:
    study_dir = Path(cfg.study_dir)
    fractions = [float(f) for f in cfg.fractions]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"fractions={list(cfg.fractions)}: {bad} outside (0, 1]")
    check_study_dir(study_dir, identity(cfg))
    if cfg.get("student"):
        log.info(
            "student: each cell's samples come from its distilled student (lcm, K = %d, w = %s); "
            "sample.sampler and sample.steps are not used",
            int(cfg.student.steps),
            cfg.sample.guidance,
        )
    todo = [(f, int(s)) for f in fractions for s in cfg.seeds]
    cells, t0, done_now = [], time.time(), 0
    for i, (f, s) in enumerate(todo):
        folder = study_dir / "cells" / cell_name(f, s)
        marker = folder / "cell.json"
        if marker.is_file():
            cells.append(json.loads(marker.read_text()))
            log.info("cell %d/%d %s: finished earlier, kept", i + 1, len(todo), cell_name(f, s))
            continue
        steps = (
            "train, distill, sample, evaluate" if cfg.get("student") else "train, sample, evaluate"
        )
        log.info("cell %d/%d %s: %s", i + 1, len(todo), cell_name(f, s), steps)
        result = runner(cfg, f, s, folder)
        atomic_write_json(marker, result)
        cells.append(result)
        done_now += 1
        left = len(todo) - i - 1
        rate = (time.time() - t0) / done_now
        log.info(
            "cell %s done; %d left, about %.0f min more at %.1f min per cell",
            cell_name(f, s),
            left,
            left * rate / 60,
            rate / 60,
        )
    agg = aggregate(cells)
    atomic_write_json(
        study_dir / "table.json", {"config": identity(cfg), "fractions": agg, "cells": cells}
    )
    (study_dir / "table.md").write_text(table_markdown(agg))
    _figure(agg).save(study_dir / "study.png")
    log.info("wrote %s/table.md, table.json and study.png", study_dir)
    return agg


def _figure(agg: dict):
    from latent_diffusion.metrics.report import augmentation_plot

    arms = [a for a in next(iter(agg.values()))["arms"] if "(sifted)" not in a]
    curve = {
        f: {"accuracy": {a: row["arms"][a] for a in arms if a in row["arms"]}}
        for f, row in agg.items()
    }
    return augmentation_plot(curve)


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="study")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("study", cfg)
    run_study(cfg)


if __name__ == "__main__":
    main()
