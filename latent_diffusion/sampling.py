"""`python -m latent_diffusion.sample`: an export's images written as a sample folder.

sample.py is a thin Hydra wrapper around `sample_run(cfg)` here. The pieces, in
the order they run:

  plan(...)         the image list: (class index, index within class), row-major by class
  shard(...)        rank r of W takes images r, r + W, r + 2W, ...
  generate(...)     LatentDiffusionPipeline(...) on this rank's share -> uint8 images
  SampleWriter      (sample_writer.py) <class>/*.png written by a thread while the next batch
                    is sampled; grid.png, samples.npz, metadata.json; one atomic folder

Reproducibility is the pipeline's seed rule (pipeline.py): image (class, index)
draws all its noise from its own generator seeded with image_seed(seed, class,
index), so an image does not depend on the batch it is in, on the other classes
asked for, or on how many processes share the work. The class index is the
export's (the model's label), so classes=[walk,fall] gives the same walk and
fall images as a run over all classes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from latent_diffusion.pipeline import (
    IMAGE_SEED_RULE,
    check_sampling_args,
    read_export_meta,
    sampler_for,
)
from latent_diffusion.sample_writer import SampleWriter
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import check_replaceable

log = logging.getLogger(__name__)

WRITER = "latent_diffusion.sample"  # metadata["writer"]: folders `sample` may replace


# ------------------------------------------------------------------ the image list
def plan(class_indices: Sequence[int], n_per_class: int) -> list[tuple[int, int]]:
    """[(class index, index within class)], n_per_class of each class, row-major by class."""
    return [(int(c), k) for c in class_indices for k in range(int(n_per_class))]


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Positions in the image list that rank `rank` of `world_size` samples (strided:
    every rank gets a mix of classes and the shares differ by at most one image)."""
    return list(range(rank, n, world_size))


# ------------------------------------------------------------------ validation
def resolve_classes(classes, known: list[str]) -> list[int]:
    """classes (None = all, or a list of names) -> indices into the export's class names."""
    if classes is None:
        return list(range(len(known)))
    if isinstance(classes, str):
        classes = [classes]
    names = [str(c) for c in classes]
    if not names:
        raise UserError(f"classes=[]: give at least one class, or classes=null for all of {known}")
    bad = [c for c in names if c not in known]
    if bad:
        raise UserError(f"classes={names}: unknown class {bad}; the model knows {known}")
    if len(set(names)) != len(names):
        raise UserError(f"classes={names}: a class is listed twice")
    return [known.index(c) for c in names]


def check_args(
    sampler: str,
    steps,
    guidance: float,
    n_per_class: int,
    batch_size: int,
    eta: float,
    num_timesteps: int,
    distilled: dict | None = None,
) -> int | None:
    """UserErrors for values out of range; returns the step count to use (None = all T)."""
    steps = check_sampling_args(sampler, steps, guidance, eta, num_timesteps, distilled)
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise UserError(f"n_per_class={n_per_class!r}: must be an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r}: must be an integer >= 1")
    return steps


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local rank> when there is a GPU, else mps, else cpu."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"device={device!r}: {err}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={device}: no CUDA GPU is visible here; use device=auto or device=cpu"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def resolve_classifier(
    classifier, classifier_scale, export_path: Path, meta: dict
) -> tuple[Path | None, float]:
    """classifier=PATH classifier_scale=S -> (classifier folder or None, scale), checked against the
    export's classes, latent shape, VAE and schedule from the JSON files alone, before any loading.
    classifier_scale null = 1 with a classifier (p(x | y) for an exact classifier)."""
    from latent_diffusion.diffusion import check_scale
    from latent_diffusion.models.classifier_io import check_fits, find_classifier

    if classifier in (None, ""):
        if classifier_scale not in (None, 0, 0.0):
            raise UserError(
                f"classifier_scale={classifier_scale} needs classifier=PATH (a train_classifier "
                f"run "
                "folder); drop classifier_scale or name the classifier"
            )
        return None, 0.0
    if meta.get("distilled"):
        raise UserError(
            f"classifier={classifier}: run={export_path} is a distilled consistency student, and "
            "classifier guidance needs the teacher's small steps; sample the teacher "
            f"(run={meta['distilled']['teacher']['export']}) with the classifier"
        )
    scale = check_scale(1.0 if classifier_scale is None else classifier_scale)
    folder = find_classifier(classifier)
    check_fits(json.loads((folder / "classifier.json").read_text()), meta, folder, export_path)
    if scale == 0:
        log.warning("classifier_scale=0: the classifier is not used (the unguided sampler)")
        return None, 0.0
    return folder, scale


# ------------------------------------------------------------------ sampling
def generate(
    pipe,
    items: Sequence[tuple[int, int]],
    sampler: str,
    steps: int | None,
    guidance: float,
    seed: int,
    batch_size: int,
    eta: float = 0.0,
    on_batch: Callable[[int], None] | None = None,
    classifier_scale: float = 0.0,
    timings: dict | None = None,
) -> np.ndarray:
    """Images (N, H, W, C) uint8 of `items` [(class index, index within class)] from the
    pipeline; the pipeline's seconds per stage are added into `timings` when given."""
    out = pipe(
        [c for c, _ in items],
        num_inference_steps=steps,
        guidance_scale=guidance,
        sampler=sampler,
        seed=seed,
        indices=[k for _, k in items],
        eta=eta,
        batch_size=batch_size,
        output_type="uint8",
        on_batch=on_batch,
        classifier_scale=classifier_scale,
    )
    if timings is not None:
        for k, v in (out.timings or {}).items():
            timings[k] = timings.get(k, 0.0) + v
    return out.images if len(items) else np.zeros((0, 1, 1, 1), np.uint8)


# ------------------------------------------------------------------ the output folder
def default_out_dir(
    export_path: Path,
    sampler: str,
    steps: int,
    guidance: float,
    seed: int,
    classifier_scale: float = 0.0,
) -> Path:
    """<run dir>/samples/<sampler>-<steps>-w<guidance>[-cls<classifier scale>]-seed<seed>
    (run dir = the export's parent)."""
    cls = f"-cls{float(classifier_scale):g}" if classifier_scale else ""
    return (
        Path(export_path).parent
        / "samples"
        / f"{sampler}-{steps}-w{float(guidance):g}{cls}-seed{int(seed)}"
    )


def check_out_dir(out: Path) -> None:
    """Refuse to replace a non-empty folder that `sample` did not write."""
    check_replaceable(out, WRITER, "sample")


# ------------------------------------------------------------------ several processes
def dist_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def gather_to_rank0(part: np.ndarray, positions: list[int], world_size: int, n: int):
    """Every rank's (positions, images) -> rank 0 gets the full (N, H, W, C) array in
    plan order; the other ranks get None. gather_object pickles through the process
    group, fine for uint8 spectrograms (N x 4 KB at 64x64)."""
    import torch.distributed as dist

    if world_size == 1:
        return part
    gathered = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object((positions, part), gathered, dst=0)
    if dist.get_rank() != 0:
        return None
    shape = next(p.shape[1:] for _, p in gathered if len(p))
    full = np.zeros((n, *shape), np.uint8)
    for pos, p in gathered:
        if len(pos):
            full[pos] = p
    return full


def finish(writer, record: dict, stages: dict, n_mine: int, t: dict) -> dict:
    """Wait for the PNG thread, then write metadata.json with the seconds per stage:
    denoise and decode summed over this process's batches (the pipeline's clocks); write =
    the writer thread's PNG time (overlapped with sampling in one process) and write_wait =
    how long sampling waited for it at the end; end_to_end = first batch to all PNGs on
    disk. images_per_s counts denoise + decode (this process's images x processes);
    images_per_s_end_to_end counts everything."""
    writer.wait()
    end = time.time()
    n = record["n_images"]
    timings = {
        "load": round(t["load"], 3),
        "sample": round(t["sample"], 3),
        **{k: round(v, 3) for k, v in stages.items()},
        "write": round(writer.write_s, 3),
        "write_wait": round(writer.wait_s, 3),
        "end_to_end": round(end - t["start_sampling"], 3),
        "total": round(end - t["start"], 3),
    }
    full = {
        **record,
        "image_shape": writer.image_shape,
        "timings_s": timings,
        "images_per_s": round(
            n_mine * record["world_size"] / max(stages["denoise"] + stages["decode"], 1e-9), 3
        ),
        "images_per_s_end_to_end": round(n / max(end - t["start_sampling"], 1e-9), 3),
    }
    return writer.finish(full, record["seed"])


# ------------------------------------------------------------------ the whole command
def sample_run(cfg) -> Path | None:
    """Load the export, sample this rank's share, gather, and (rank 0) write. Returns out_dir."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from latent_diffusion.pipeline import LatentDiffusionPipeline

    t_start = time.time()
    rank, world, local = dist_context()
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise UserError("run is not set: pass run=<training run dir or its export/ dir>")
    export_path, meta = read_export_meta(cfg.run)
    T = int(meta["diffusion"]["timesteps"])
    distilled = meta.get("distilled")
    sampler = sampler_for(cfg.sampler, distilled)  # null: dpmpp, or lcm for a student
    steps = check_args(
        sampler, cfg.steps, cfg.guidance, cfg.n_per_class, cfg.batch_size, cfg.eta, T, distilled
    )
    class_idx = resolve_classes(cfg.classes, list(meta["class_names"]))
    guidance, seed = float(cfg.guidance), int(cfg.seed)
    classifier, cls_scale = resolve_classifier(
        cfg.get("classifier"), cfg.get("classifier_scale"), export_path, meta
    )
    out = (
        Path(cfg.out_dir)
        if cfg.out_dir
        else default_out_dir(export_path, sampler, steps or T, guidance, seed, cls_scale)
    )
    check_out_dir(out)  # on every rank, so that none starts work rank 0 refuses

    device = pick_device(cfg.device, local)
    if cfg.get("threads"):
        # On a shared CPU, fewer intra-op threads than cores can be many times faster:
        # OpenMP threads spin-waiting on a busy machine (measured: tiny UNet 2.2 s vs 0.05 s).
        torch.set_num_threads(int(cfg.threads))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        t0 = time.time()
        pipe = LatentDiffusionPipeline.from_pretrained(export_path, device=device)
        if classifier is not None:
            pipe.load_classifier(classifier)
        inference = pipe.optimize_for_inference(
            str(cfg.get("precision", "auto")),
            bool(cfg.get("channels_last", False)),
            bool(cfg.get("compile", False)),
        )
        if inference["precision_note"] and rank == 0:
            log.info(inference["precision_note"])
        t_load = time.time() - t0

        items = plan(class_idx, int(cfg.n_per_class))
        mine = shard(len(items), rank, world)
        # the whole job on rank 0's bar: ranks hold equal shares (+-1) and run in step, so
        # rank 0's count x world is everyone's
        bar = tqdm(
            total=len(items),
            unit="img",
            desc=f"{sampler}-{steps or T} w={guidance:g}",
            disable=rank != 0 or not cfg.progress,
            dynamic_ncols=True,
        )
        per_class = {pipe.class_names[c]: int(cfg.n_per_class) for c in class_idx}
        record = {
            "writer": WRITER,
            "export": str(export_path.resolve()),
            "global_step": int(meta.get("global_step", -1)),
            "model": meta["model"].get("name"),
            "vae": (meta.get("vae") or {}).get("weights_hash"),
            "sampler": sampler,
            "steps": steps or T,
            "training_timesteps": T,
            "guidance": guidance,
            "classifier": str(classifier.resolve()) if classifier is not None else None,
            "classifier_scale": cls_scale,
            "eta": float(cfg.eta) if sampler == "ddim" else None,
            "distilled": distilled,  # the student's method, grid, w range and teacher, or None
            "seed": seed,
            "image_seed": IMAGE_SEED_RULE,
            "class_names": pipe.class_names,  # arr_1 of samples.npz indexes this list
            "classes": [pipe.class_names[c] for c in class_idx],
            "counts": per_class,
            "n_images": len(items),
            "pixels": "8-bit grey, value/255 = (x + 1) / 2 of the package's [-1, 1] convention; "
            "row 0 = +v_max (approaching), columns = time (as simulate writes)",
            "batch_size": int(cfg.batch_size),
            "world_size": world,
            "device": str(device),
            "inference": inference,
        }
        B, stages = int(cfg.batch_size), {"denoise": 0.0, "decode": 0.0}

        def sample_items(its):
            return generate(
                pipe, its, sampler, steps, guidance, seed, B, float(cfg.eta),
                on_batch=lambda n: bar.update(min(n * world, bar.total - bar.n)),
                classifier_scale=cls_scale, timings=stages,
            )  # fmt: skip

        t = {"start": t_start, "load": t_load, "start_sampling": time.time()}
        if world == 1:
            # one process: each batch goes to the writer thread while the next is sampled
            with SampleWriter(out, pipe.class_names, class_idx) as writer:
                for start in range(0, len(items), B):
                    its = items[start : start + B]
                    writer.add(sample_items(its), its)
                t["sample"] = time.time() - t["start_sampling"]
                full = finish(writer, record, stages, len(mine), t)
        else:
            part = sample_items([items[i] for i in mine])
            t["sample"] = time.time() - t["start_sampling"]
            images = gather_to_rank0(part, mine, world, len(items))
            if rank != 0:
                bar.close()
                return None
            with SampleWriter(out, pipe.class_names, class_idx) as writer:
                writer.add(images, items)
                full = finish(writer, record, stages, len(mine), t)
        bar.close()
        log.info(
            "%d images in %.1f s (%.2f images/s end to end; denoise %.1f s, decode %.1f s, "
            "write %.1f s in the writer thread) -> %s",
            len(items),
            full["timings_s"]["end_to_end"],
            full["images_per_s_end_to_end"],
            stages["denoise"],
            stages["decode"],
            full["timings_s"]["write"],
            out,
        )
        return out
    finally:
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
