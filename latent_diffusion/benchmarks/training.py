"""Training throughput: latent vs pixel, cached vs online, fp32 vs bf16, Lightning vs a bare loop.

`BareStep` is the training step with nothing around it: the module's own
`diffusion_loss` (latents, t, noise, hybrid loss), backward, gradient clipping
at 1.0 (conf/trainer/*.yaml), the module's own optimizer and LR warm-up
(`configure_optimizers`) and EMA update. It is what LatentDiffusion.training_step
+ Lightning's automatic optimisation do, minus Lightning and `self.log`, so
Lightning/bare is the framework's overhead.
"""

from __future__ import annotations

import contextlib
import time

import lightning as L
import torch

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio, sync


class BareStep:
    """One optimisation step of `module` on a batch, in plain PyTorch."""

    def __init__(self, module, device: torch.device, bf16: bool = False):
        self.module = module.to(device).train()
        if module.vae is not None:
            module.vae.to(device)
        self.device = device
        self.bf16 = bf16
        opt = module.configure_optimizers()
        self.opt, self.sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def __call__(self, batch: dict) -> torch.Tensor:
        m = self.module
        with self.autocast():
            loss, _, _ = m.diffusion_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.denoiser.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        m.ema.update(m.plain_denoiser)
        return loss


def steps_fn(step: BareStep, batch: dict, n: int):
    def run():
        for _ in range(n):
            step(batch)

    return run


# ------------------------------------------------------------------ Lightning vs bare loop


class _StepClock(L.Callback):
    """perf_counter at the end of every training batch (after the optimizer step and EMA)."""

    def __init__(self, device):
        self.device, self.ends = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        self.ends.append(time.perf_counter())


def lightning_steps(
    module, loader, device, steps: int, warm: int, precision: str = "32-true"
) -> float:
    """Seconds for `steps` Lightning training steps after `warm` in-fit steps (so the
    Trainer's set-up, sanity checks and first-iteration costs are not counted)."""
    clock = _StepClock(device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=warm + steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.ends[-1] - clock.ends[warm - 1]


def bare_loop_steps(step: BareStep, loader, steps: int, warm: int) -> float:
    """The same count of steps over the same DataLoader, timed the same way."""

    def batches():
        while True:  # epochs, as Lightning's max_epochs=-1 does
            yield from loader

    it, ends = batches(), []
    for _ in range(warm + steps):
        batch = {k: v.to(step.device, non_blocking=True) for k, v in next(it).items()}
        step(batch)
        sync(step.device)
        ends.append(time.perf_counter())
    return ends[-1] - ends[warm - 1]


def cached_loader(vae, x, y, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader over cached posteriors (latent_cache.PosteriorDataset), shuffled."""
    from torch.utils.data import DataLoader

    from latent_diffusion.data.latent_cache import PosteriorDataset

    with torch.no_grad():
        mean, std = vae.encode_posterior(x.to(vae.device))
    ds = PosteriorDataset(mean.cpu(), std.cpu(), y)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


# ------------------------------------------------------------------ the part


def run_train(cfg, device, vae, pool) -> dict:
    """cfg: the bench config (models, batch_size, steps, repeats, warmup)."""
    x, y = pool
    B, steps = int(cfg.batch_size), int(cfg.train.steps)
    out: dict = {"batch_size": B, "steps_per_repeat": steps, "models": {}}
    latent_shape = vae.latent_shape(x.shape[-1])
    pixel_shape = (1, x.shape[-1], x.shape[-1])
    pix = setup.pixel_batch(x, y, B, device)
    cached = setup.cached_batch(vae, pix)
    for size in cfg.train.models:
        mult = list(
            cfg.train.get("pixel_channel_mult")
            or setup.pixel_channel_mult(size, vae.downsample_factor)
        )
        latent = BareStep(
            setup.make_module(setup.make_denoiser(size, latent_shape), latent_shape, vae), device
        )
        online = BareStep(
            setup.make_module(setup.make_denoiser(size, latent_shape), latent_shape, vae), device
        )
        pixel = BareStep(
            setup.make_module(setup.make_denoiser(size, pixel_shape, mult), pixel_shape, None),
            device,
        )
        bf16 = BareStep(
            setup.make_module(setup.make_denoiser(size, latent_shape), latent_shape, vae),
            device,
            bf16=True,
        )
        res = alternate(
            {
                "latent_cached": steps_fn(latent, cached, steps),
                "latent_online": steps_fn(online, pix, steps),
                "pixel": steps_fn(pixel, pix, steps),
                "latent_cached_bf16": steps_fn(bf16, cached, steps),
            },
            cfg.repeats,
            cfg.warmup,
            device,
        )
        for r in res.values():
            r["images_per_s"] = rate(r["median_s"], steps * B)
        ips = {k: r["images_per_s"] for k, r in res.items()}
        out["models"][size] = {
            "latent_shape": list(latent_shape),
            "pixel_shape": list(pixel_shape),
            "latent_channel_mult": list(setup.MODELS[size]["channel_mult"]),
            "pixel_channel_mult": mult,
            "latent_params_M": round(latent.module.plain_denoiser.num_params / 1e6, 3),
            "pixel_params_M": round(pixel.module.plain_denoiser.num_params / 1e6, 3),
            "variants": res,
            "ratios": {
                "latent_over_pixel": ratio(ips["latent_cached"], ips["pixel"]),
                "cached_over_online": ratio(ips["latent_cached"], ips["latent_online"]),
                "bf16_over_fp32": ratio(ips["latent_cached_bf16"], ips["latent_cached"]),
            },
        }
    out["lightning"] = run_lightning_vs_bare(cfg, device, vae, pool)
    return out


def run_lightning_vs_bare(cfg, device, vae, pool) -> dict:
    """Our LightningModule in a real Trainer vs BareStep, same model, data and step count,
    on cached latents (the cheapest step, where a fixed overhead weighs the most)."""
    x, y = pool
    B, steps, warm = int(cfg.batch_size), int(cfg.lightning.steps), int(cfg.lightning.warm_steps)
    size = cfg.lightning.model
    shape = vae.latent_shape(x.shape[-1])
    loader = cached_loader(vae, x, y, B)
    lit = setup.make_module(setup.make_denoiser(size, shape), shape, vae)
    bare = BareStep(setup.make_module(setup.make_denoiser(size, shape), shape, vae), device)
    res = alternate(
        {
            "lightning": lambda: lightning_steps(lit, loader, device, steps, warm),
            "bare_loop": lambda: bare_loop_steps(bare, loader, steps, warm),
        },
        cfg.repeats,
        0,
        device,  # each call warms itself up (warm steps, not timed)
    )
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], steps * B)
    return {
        "model": size,
        "batch_size": B,
        "steps_per_repeat": steps,
        "warm_steps": warm,
        "latents": "cached",
        "variants": res,
        "ratios": {
            "lightning_over_bare": ratio(
                res["lightning"]["images_per_s"], res["bare_loop"]["images_per_s"]
            )
        },
    }


def run_batch_scaling(cfg, device, vae, pool) -> dict:
    """images/s of the cached-latent bare step at several batch sizes, alternated."""
    x, y = pool
    size, steps = cfg.batch.model, int(cfg.batch.steps)
    shape = vae.latent_shape(x.shape[-1])
    step = BareStep(setup.make_module(setup.make_denoiser(size, shape), shape, vae), device)
    variants = {}
    for b in cfg.batch.sizes:
        batch = setup.cached_batch(vae, setup.pixel_batch(x, y, int(b), device))
        variants[f"batch_{int(b)}"] = steps_fn(step, batch, steps)
    res = alternate(variants, cfg.repeats, cfg.warmup, device)
    for b in cfg.batch.sizes:
        r = res[f"batch_{int(b)}"]
        r["images_per_s"] = rate(r["median_s"], steps * int(b))
    return {"model": size, "steps_per_repeat": steps, "latents": "cached", "variants": res}
