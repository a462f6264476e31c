"""GPU switches and profiles.

Switches (each one flag of conf/bench.yaml / conf/train.yaml, harmless on CPU):
TF32 matmuls (torch.backends.cuda.matmul.allow_tf32 via set_float32_matmul_precision),
bf16 autocast (Lightning's bf16-mixed), channels_last, fused AdamW (CUDA only),
torch.compile of the denoiser, SDPA attention (diffusers' AttnProcessor2_0 is the
default, so always on) and DataLoader workers/pinning. They are measured only on
a CUDA device: on a CPU most are no-ops or not applicable, and the part says so.
"""

from __future__ import annotations

import torch

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.benchmarks.training import BareStep, cached_loader, steps_fn


def run_gpu_switches(cfg, device, vae, pool) -> dict:
    if device.type != "cuda":
        return {
            "skipped": f"device is {device.type}: the GPU switches (TF32, fused AdamW, compile, "
            "channels_last, pinned workers) are measured on a CUDA device only; "
            "bf16 autocast on this device is in the train part"
        }
    x, y = pool
    B, steps, size = int(cfg.gpu.batch_size), int(cfg.train.steps), cfg.gpu.model
    shape = vae.latent_shape(x.shape[-1])
    batch = setup.cached_batch(vae, setup.pixel_batch(x, y, B, device))

    def make(bf16=False, fused=False, channels_last=False, compile=False):
        den = setup.make_denoiser(size, shape, channels_last=channels_last)
        return BareStep(
            setup.make_module(den, shape, vae, compile=compile, fused=fused), device, bf16=bf16
        )

    variants = {
        "fp32": make(),
        "tf32": make(),
        "bf16": make(bf16=True),
        "bf16_channels_last": make(bf16=True, channels_last=True),
        "bf16_fused_adamw": make(bf16=True, fused=True),
    }
    if cfg.gpu.compile:
        variants["bf16_fused_compile"] = make(bf16=True, fused=True, compile=True)

    def run(name, step):
        fn = steps_fn(step, batch, steps)

        def timed():
            # fp32 variant without TF32, all others with it (Lightning's "high" precision)
            torch.backends.cuda.matmul.allow_tf32 = name != "fp32"
            torch.backends.cudnn.allow_tf32 = name != "fp32"
            fn()

        return timed

    res = alternate(
        {k: run(k, s) for k, s in variants.items()}, cfg.repeats, max(2, cfg.warmup), device
    )
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], steps * B)
    base = res["fp32"]["images_per_s"]
    loaders = {}
    for workers, pin in ((0, False), (int(cfg.gpu.num_workers), True)):
        loader = cached_loader(vae, x, y, B, num_workers=workers, pin_memory=pin)

        def drain(loader=loader):
            for b in loader:
                {k: v.to(device, non_blocking=True) for k, v in b.items()}

        loaders[f"loader_workers{workers}_pin{int(pin)}"] = drain
    lres = alternate(loaders, cfg.repeats, 1, device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "model": size,
        "batch_size": B,
        "steps_per_repeat": steps,
        "latents": "cached",
        "variants": res,
        "speedup_over_fp32": {k: ratio(r["images_per_s"], base) for k, r in res.items()},
        "loaders": lres,
    }


def _top(prof, device, n: int) -> list[dict]:
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:n]
    return [
        {
            "name": e.key,
            "self_ms": round(getattr(e, key) / 1000.0, 2),
            "percent": round(100.0 * getattr(e, key) / total, 1),
            "calls": e.count,
        }
        for e in rows
    ]


def run_profile(cfg, device, vae, pool) -> dict:
    """torch.profiler: where a training step (cached latents) and a DPM-Solver++ run spend time."""
    from torch.profiler import ProfilerActivity, profile

    from latent_diffusion.benchmarks.sampling import bench_pipeline

    x, y = pool
    size, B = cfg.profile.model, int(cfg.batch_size)
    shape = vae.latent_shape(x.shape[-1])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step = BareStep(setup.make_module(setup.make_denoiser(size, shape), shape, vae), device)
    batch = setup.cached_batch(vae, setup.pixel_batch(x, y, B, device))
    step(batch)  # warm-up
    with profile(activities=acts) as prof:
        for _ in range(int(cfg.profile.steps)):
            step(batch)
    train_top = _top(prof, device, int(cfg.profile.top))

    n = int(cfg.sample.n_images)
    pipe = bench_pipeline(size, shape, device)
    with profile(activities=acts) as prof:
        pipe(
            [i % setup.NUM_CLASSES for i in range(n)],
            num_inference_steps=20,
            sampler="dpmpp",
            guidance_scale=float(cfg.sample.guidance),
            batch_size=n,
            output_type="latent",
        )
    return {
        "model": size,
        "train_step": {"batch_size": B, "steps": int(cfg.profile.steps), "top": train_top},
        "dpmpp20_guided": {"n_images": n, "top": _top(prof, device, int(cfg.profile.top))},
    }
