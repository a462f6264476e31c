"""Callbacks: sample grids during training."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from latent_diffusion.lit.grid import class_grid, to_uint8
from latent_diffusion.utils.io import atomic_writer

log = logging.getLogger(__name__)


class SampleGrid(L.Callback):
    """Every `every_n_steps` (and at the end), sample `n_per_class` images per class
    with the EMA denoiser, decode them and log one row per class.

    Same seeds every time, so successive grids show the model changing, not the noise.
    Only rank 0 samples: the others would draw the same images.
    """

    def __init__(self, every_n_steps: int = 500, n_per_class: int = 4, sampler: str = "ddim",
                 steps: int = 50, guidance: float = 2.0, out_dir: str | None = None):
        self.every_n_steps = every_n_steps
        self.n_per_class = n_per_class
        self.sampler, self.steps, self.guidance = sampler, steps, guidance
        self.out_dir = out_dir
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self._log_grid(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log_grid(trainer, pl_module, trainer.global_step)

    @torch.no_grad()
    def _log_grid(self, trainer, pl_module, step: int) -> None:
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        was_training = pl_module.training
        k = len(pl_module.class_names)
        y = torch.arange(k, device=pl_module.device).repeat_interleave(self.n_per_class)
        gens = [torch.Generator().manual_seed(i) for i in range(len(y))]
        z = pl_module.sample_latents(y, self.sampler, self.steps, self.guidance, generators=gens)
        images = to_uint8(pl_module.decode(z.to(pl_module.device)))
        grid = class_grid(images, pl_module.class_names, self.n_per_class)
        if self.out_dir:
            path = Path(self.out_dir) / f"step_{step:07d}.png"
            with atomic_writer(path) as f:  # a killed run never leaves a half PNG
                grid.save(f, format="PNG")
        for logger in trainer.loggers:
            name = type(logger).__name__
            if name == "WandbLogger":
                logger.log_image("samples/grid", [grid], step=step)
            elif name == "TensorBoardLogger":
                import numpy as np

                arr = np.asarray(grid)
                arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
                logger.experiment.add_image("samples/grid", arr, step)
        pl_module.train(was_training)


class WeightDigest(L.Callback):
    """At the end of training every rank hashes its denoiser weights; rank 0 writes
    `<out_dir>/weight_digest.json` ({rank: sha256}). Under DDP the digests must be
    equal: a difference means the ranks drifted apart (a desynchronised buffer,
    a rank-dependent branch), which otherwise goes unnoticed until sampling."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        import hashlib
        import json

        h = hashlib.sha256()
        for name, p in sorted(pl_module.plain_denoiser.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        # 8 bytes of the digest as an int64 tensor so all_gather can carry it
        mine = torch.tensor([int.from_bytes(h.digest()[:7], "big")], device=pl_module.device)
        digests = pl_module.all_gather(mine).reshape(-1).tolist()
        if trainer.is_global_zero:
            out = {str(r): f"{d:014x}" for r, d in enumerate(digests)}
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.out_dir) / "weight_digest.json").write_text(json.dumps(out, indent=1))
            if len(set(digests)) > 1:
                log.warning("DDP ranks ended with different weights: %s", out)
