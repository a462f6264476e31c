"""Sampling speed per sampler and the cost of classifier-free guidance.

Guidance (Ho & Salimans 2022) needs eps(x, y) and eps(x, null) at every step;
`cfg_model_fn` gets both from ONE forward over the doubled batch [x; x]. So a
guided step should cost one forward of 2B images: about 1x an unguided step
when the device is not saturated (a GPU at small batch), up to 2x when it is
(a CPU). Two sequential forwards of B images are the alternative it must not
be worse than; both ratios are reported.
"""

from __future__ import annotations

import torch

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.diffusion import cfg_model_fn, create_diffusion
from latent_diffusion.pipeline import LatentDiffusionPipeline


def bench_pipeline(size, shape, device, **overrides) -> LatentDiffusionPipeline:
    """A pipeline around an untrained denoiser (speed does not depend on the weights), with
    the default diffusion; no VAE: decoding is timed in the vae part."""
    model = setup.make_denoiser(size, shape, **overrides).to(device).eval()
    return LatentDiffusionPipeline(model, create_diffusion(), list(setup.CLASSES), shape)


def run_sample(cfg, device, vae, image_size: int) -> dict:
    shape = vae.latent_shape(image_size)
    size, n, w = cfg.sample.model, int(cfg.sample.n_images), float(cfg.sample.guidance)
    pipe = bench_pipeline(size, shape, device)
    labels = [i % setup.NUM_CLASSES for i in range(n)]

    def sampler(name, steps, guidance):
        # latents only: the sampler and guidance are what this part times
        return lambda: pipe(
            labels,
            num_inference_steps=steps,
            guidance_scale=guidance,
            sampler=name,
            batch_size=n,
            output_type="latent",
        )

    variants = {}
    for spec in cfg.sample.samplers:
        name, steps = spec.name, int(spec.steps)
        variants[f"{name}-{steps}"] = sampler(name, steps, 1.0)
        if spec.get("guided", True):
            variants[f"{name}-{steps}-guided"] = sampler(name, steps, w)
    res = alternate(variants, int(cfg.sample.repeats), int(cfg.sample.warmup), device)
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], n)
    ips = {k: r["images_per_s"] for k, r in res.items()}
    ratios = {}
    if "dpmpp-20" in ips and "ddpm-1000" in ips:
        ratios["dpmpp20_over_ddpm1000"] = ratio(ips["dpmpp-20"], ips["ddpm-1000"])
    for k in list(ips):
        if k.endswith("-guided"):
            # time ratio guided / unguided = inverse of the images/s ratio
            ratios[f"guided_over_unguided_time[{k[:-7]}]"] = ratio(ips[k[:-7]], ips[k])
    return {
        "model": size,
        "n_images": n,
        "guidance": w,
        "latent_shape": list(shape),
        "variants": res,
        "ratios": ratios,
        "guidance_forward": guidance_forward(cfg, device, pipe.denoiser, shape),
    }


def guidance_forward(cfg, device, model, shape) -> dict:
    """One denoiser call: unguided (B), guided (one forward of 2B), two sequential forwards of B."""
    n = int(cfg.sample.n_images)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=g).to(device)  # (B, c, h, w)
    t = torch.full((n,), 500, dtype=torch.long, device=device)
    y = torch.arange(n, device=device) % setup.NUM_CLASSES
    null = torch.full_like(y, model.null_class)
    guided = cfg_model_fn(model, y, model.null_class, float(cfg.sample.guidance))
    plain = cfg_model_fn(model, y, model.null_class, 1.0)
    reps = int(cfg.sample.forward_calls)

    def calls(f):
        def run():
            with torch.no_grad():
                for _ in range(reps):
                    f()

        return run

    def two():
        model(x, t, y)
        model(x, t, null)

    res = alternate(
        {
            "unguided": calls(lambda: plain(x, t)),
            "guided_batched": calls(lambda: guided(x, t)),
            "two_forwards": calls(two),
        },
        # cheap calls: at least 3 rounds after a warm-up whatever `repeats` says
        max(3, int(cfg.repeats)),
        max(1, int(cfg.warmup)),
        device,
    )
    med = {k: r["median_s"] for k, r in res.items()}
    return {
        "batch": n,
        "calls_per_repeat": reps,
        "variants": res,
        "ratios": {
            "guided_over_unguided": ratio(med["guided_batched"], med["unguided"]),
            "guided_over_two_forwards": ratio(med["guided_batched"], med["two_forwards"]),
        },
    }
