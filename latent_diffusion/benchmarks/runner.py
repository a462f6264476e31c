"""Run the chosen parts in one process and write bench.json + bench.md."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from latent_diffusion.benchmarks import (
    PART_NAMES,
    data,
    gpu,
    inference,
    resolution,
    sampling,
    setup,
    student,
    training,
)
from latent_diffusion.benchmarks.report import summary, to_markdown
from latent_diffusion.benchmarks.timing import loadavg, resolve_device
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

PARTS = {
    "train": training.run_train,
    "batch": training.run_batch_scaling,
    "data": data.run_data,
    "vae": data.run_vae,
    "sample": lambda cfg, device, vae, pool: sampling.run_sample(
        cfg, device, vae, pool[0].shape[-1]
    ),
    "inference": inference.run_inference,
    "student": student.run_student,
    "resolution": resolution.run_resolution,
    "gpu_switches": gpu.run_gpu_switches,
    "profile": gpu.run_profile,
}
assert tuple(PARTS) == PART_NAMES


def check_parts(parts) -> None:
    unknown = [p for p in parts if p not in PART_NAMES]
    if unknown:
        raise UserError(
            f"parts={list(parts)}: unknown part(s) {unknown}; choose from {list(PART_NAMES)}"
        )


def run_bench(cfg: DictConfig, argv: list[str] | None = None) -> dict:
    parts = list(cfg.parts)
    check_parts(parts)
    if cfg.out_dir in (None, "", "???"):
        raise UserError("out_dir is not set; give out_dir=<folder> for bench.json and bench.md")
    out = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    t0, load0 = time.perf_counter(), loadavg()
    log.info("bench on %s, parts %s, load average %s", device, parts, load0)
    vae = setup.make_vae(
        OmegaConf.to_container(cfg.vae_arch), cfg.vae_path, device, int(cfg.image_size)
    )
    pool = setup.simulated_pixels(int(cfg.pool_size), int(cfg.image_size), seed=0)
    results = {}
    for name in parts:
        tp = time.perf_counter()
        log.info("part %s ...", name)
        results[name] = PARTS[name](cfg, device, vae, pool)
        results[name]["part_wall_s"] = round(time.perf_counter() - tp, 1)
        log.info("part %s done in %.0f s", name, results[name]["part_wall_s"])
    result = {
        "meta": {
            "command": "python -m latent_diffusion.bench "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU: {platform.processor() or platform.machine()}",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "loadavg_before": load0,
            "loadavg_after": loadavg(),
            "repeats": int(cfg.repeats),
            "warmup": int(cfg.warmup),
            "quick": bool(cfg.quick),
            "wall_s": time.perf_counter() - t0,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        "parts": results,
        "summary": summary(results, str(cfg.train.models[0])),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", result)
    atomic_write_bytes(out / "bench.md", to_markdown(result).encode())
    return result
