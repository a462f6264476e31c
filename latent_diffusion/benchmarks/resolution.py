"""The 128x128 -> 4x32x32 path against the 64x64 -> 4x16x16 one: time and memory per step.

Each resolution uses the model its experiment trains: 64x64 is `model=small`
(levels 16/8/4, attention at 8 and 4); 128x128 is `experiment=microdoppler_128`
(the same widths with one more level, 32/16/8/4, so attention still sits at 8
and 4). The model keys are read from that experiment file, so this part times
what `train experiment=microdoppler_128` builds. Per resolution, alternated in
one process: the cached-latent training step (batch `batch_size`), guided
DPM-Solver++-20 sampling of `resolution.n_images` latents, and the VAE decode
of as many latents. Four times the latent area costs the denoiser about four
times the FLOPs at the shared levels; the extra 4x4 level is nearly free.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.sampling import bench_pipeline
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.benchmarks.training import BareStep, steps_fn

EXPERIMENT_128 = Path(__file__).resolve().parents[2] / "conf/experiment/microdoppler_128.yaml"


def model_overrides_128() -> dict:
    """The `model:` keys experiment=microdoppler_128 sets on top of its model size."""
    exp = OmegaConf.load(EXPERIMENT_128)
    return OmegaConf.to_container(exp.model)


def run_resolution(cfg, device, vae, pool) -> dict:
    size, B, steps = cfg.resolution.model, int(cfg.batch_size), int(cfg.resolution.steps)
    n, w = int(cfg.resolution.n_images), float(cfg.sample.guidance)
    variants, shapes, params, overrides = {}, {}, {}, model_overrides_128()
    for side, extra in ((64, {}), (128, overrides)):
        shape = vae.latent_shape(side)
        x, y = pool if pool[0].shape[-1] == side else setup.simulated_pixels(len(pool[0]), side)
        cached = setup.cached_batch(vae, setup.pixel_batch(x, y, B, device))
        step = BareStep(
            setup.make_module(setup.make_denoiser(size, shape, **extra), shape, vae), device
        )
        pipe = bench_pipeline(size, shape, device, **extra)
        z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0)).to(device)
        labels = [i % setup.NUM_CLASSES for i in range(n)]

        def sample(pipe=pipe, labels=labels):
            pipe(
                labels,
                num_inference_steps=20,
                guidance_scale=w,
                sampler="dpmpp",
                batch_size=n,
                output_type="latent",
            )

        def decode(z=z):
            with torch.no_grad():
                vae.decode(z)

        variants[f"train_{side}"] = steps_fn(step, cached, steps)
        variants[f"sample_{side}"] = sample
        variants[f"decode_{side}"] = decode
        shapes[str(side)] = list(shape)
        params[str(side)] = round(step.module.plain_denoiser.num_params / 1e6, 3)
    res = alternate(variants, cfg.repeats, cfg.warmup, device)
    for k, r in res.items():
        r["images_per_s"] = rate(r["median_s"], steps * B if k.startswith("train") else n)
    ips = {k: r["images_per_s"] for k, r in res.items()}
    return {
        "model": size,
        "model_128_overrides": overrides,
        "batch_size": B,
        "steps_per_repeat": steps,
        "n_images": n,
        "guidance": w,
        "latent_shapes": shapes,
        "params_M": params,
        "variants": res,
        "ratios": {
            f"{stage}_64_over_128": ratio(ips[f"{stage}_64"], ips[f"{stage}_128"])
            for stage in ("train", "sample", "decode")
        },
    }
