"""Data: simulator spectrograms/min, DataLoader batches/s against the training step, VAE speed.

The question "is the accelerator ever waiting for data?" is answered by
loader_time / step_time per batch: well below 1 means the loader keeps up
(with num_workers > 0 it also runs in parallel with the step).
"""

from __future__ import annotations

import torch

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.benchmarks.training import BareStep, cached_loader
from latent_diffusion.data.simulator import CLASSES, RadarConfig, generate


def run_data(cfg, device, vae, pool) -> dict:
    x, y = pool
    per_class = int(cfg.data.sim_per_class)
    sims = {
        f"simulate_{s}": (
            lambda s=s: generate(list(CLASSES), per_class, "train", 1, s, RadarConfig(), 0)
        )
        for s in cfg.data.sim_sizes
    }
    sim = alternate(sims, cfg.repeats, 1, torch.device("cpu"))
    n = per_class * len(CLASSES)
    for r in sim.values():
        r["spectrograms_per_min"] = 60 * rate(r["median_s"], n)

    B, nb = int(cfg.batch_size), int(cfg.data.loader_batches)
    pixel_loader = torch.utils.data.DataLoader(
        _PixelSplit(x, y),
        batch_size=B,
        shuffle=True,
        drop_last=True,
        collate_fn=_collate,
        num_workers=int(cfg.data.num_workers),
    )
    latent_loader = cached_loader(vae, x, y, B, num_workers=int(cfg.data.num_workers))
    shape = vae.latent_shape(x.shape[-1])
    step = BareStep(
        setup.make_module(setup.make_denoiser(cfg.data.step_model, shape), shape, vae), device
    )
    batch = setup.cached_batch(vae, setup.pixel_batch(x, y, B, device))

    def drain(loader):
        def run():
            k = 0
            while k < nb:
                for b in loader:
                    {kk: v.to(device) for kk, v in b.items()}
                    k += 1
                    if k == nb:
                        break

        return run

    def steps():
        for _ in range(nb):
            step(batch)

    res = alternate(
        {
            "pixel_loader": drain(pixel_loader),
            "cached_loader": drain(latent_loader),
            "train_step": steps,
        },
        cfg.repeats,
        1,
        device,
    )
    for r in res.values():
        r["batches_per_s"] = rate(r["median_s"], nb)
    per_batch = {k: r["median_s"] / nb for k, r in res.items()}
    return {
        "simulator": {"per_class": per_class, "num_workers": 0, "variants": sim},
        "loader": {
            "batch_size": B,
            "batches_per_repeat": nb,
            "num_workers": int(cfg.data.num_workers),
            "step_model": cfg.data.step_model,
            "variants": res,
        },
        "ratios": {
            "pixel_loader_over_step_time": ratio(
                per_batch["pixel_loader"], per_batch["train_step"]
            ),
            "cached_loader_over_step_time": ratio(
                per_batch["cached_loader"], per_batch["train_step"]
            ),
        },
    }


class _PixelSplit(torch.utils.data.Dataset):
    """(x (1, H, W), y) items, as the simulator's SimulatedSplit serves them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _collate(items):
    from latent_diffusion.data.datamodule import _collate_pixels

    return _collate_pixels(items)


def run_vae(cfg, device, vae, pool) -> dict:
    """Encode (posterior + draw, what online latents cost per step) and decode images/s."""
    x, y = pool
    B = int(cfg.vae.batch_size)
    px = setup.pixel_batch(x, y, B, device)["x"]  # (B, 1, H, W)
    with torch.no_grad():
        z = vae.encode(px)  # (B, c, h, w)

    def enc():
        with torch.no_grad():
            vae.encode(px)

    res = alternate(
        {"encode": enc, "decode": lambda: vae.decode(z)}, cfg.repeats, cfg.warmup, device
    )
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], B)
    n_params = sum(p.numel() for p in vae.model.parameters())
    return {
        "batch_size": B,
        "vae": "trained" if vae.path else "fresh f4 (conf/vae/f4.yaml)",
        "params_M": round(n_params / 1e6, 3),
        "latent_shape": list(z.shape[1:]),
        "variants": res,
    }
