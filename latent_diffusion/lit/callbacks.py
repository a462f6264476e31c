"""Callbacks: sample grids during training, the shared trigger of sampling callbacks, weight
digests."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

from latent_diffusion.lit.grid import class_grid
from latent_diffusion.utils.io import atomic_writer

log = logging.getLogger(__name__)


class PeriodicSampling(L.Callback):
    """What the callbacks that sample during training share: the trigger (every
    `every_n_steps` optimizer steps, never twice for one step, rank 0 only: the other
    ranks would draw the same images) and the images (n_per_class of every class from
    the EMA weights through LatentDiffusionPipeline, with its seed rule, so image
    (seed, class, index) is the one `sample` writes for the same settings and
    successive checks show the model changing, not the noise)."""

    def __init__(
        self,
        every_n_steps: int,
        n_per_class: int,
        sampler: str = "dpmpp",
        steps: int | None = None,
        guidance: float = 1.0,
        seed: int = 0,
    ):
        self.every_n_steps, self.n_per_class = int(every_n_steps), int(n_per_class)
        self.sampler, self.steps, self.guidance = sampler, steps, float(guidance)
        self.seed = int(seed)
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        # a bad sampler setting is said before the first training step, not at the first check
        from latent_diffusion.pipeline import check_sampling_args

        check_sampling_args(
            self.sampler, self.steps, self.guidance, 0.0, pl_module.diffusion.num_timesteps
        )

    def due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.due(trainer.global_step):
            self._fire(trainer, pl_module, trainer.global_step)

    def _fire(self, trainer, pl_module, step: int) -> None:
        if step == self._last_step:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.on_sampling_step(trainer, pl_module, step)

    def on_sampling_step(self, trainer, pl_module, step: int) -> None:
        raise NotImplementedError

    def labels(self, pl_module) -> list[int]:
        """n_per_class images of each class in turn (row-major by class, as `sample` plans)."""
        return [c for c in range(len(pl_module.class_names)) for _ in range(self.n_per_class)]

    @torch.no_grad()
    def sample_images(self, pl_module) -> np.ndarray:
        """(N, H, W, C) uint8 images of `labels(pl_module)` from the EMA weights."""
        with pl_module.ema_pipeline() as pipe:
            return pipe(
                self.labels(pl_module),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                sampler=self.sampler,
                seed=self.seed,
                output_type="uint8",
            ).images


class SampleGrid(PeriodicSampling):
    """Every `every_n_steps` (and at the end), a grid of n_per_class images per class,
    one labelled row per class, logged to wandb / tensorboard and written as
    <out_dir>/step_<step>.png."""

    def __init__(
        self,
        every_n_steps: int = 500,
        n_per_class: int = 4,
        sampler: str = "ddim",
        steps: int | None = None,
        guidance: float = 2.0,
        out_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__(every_n_steps, n_per_class, sampler, steps, guidance, seed)
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        self._fire(trainer, pl_module, trainer.global_step)

    def on_sampling_step(self, trainer, pl_module, step: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        grid = class_grid(self.sample_images(pl_module), pl_module.class_names, self.n_per_class)
        if self.out_dir:
            path = Path(self.out_dir) / f"step_{step:07d}.png"
            with atomic_writer(path) as f:  # a killed run never leaves a half PNG
                grid.save(f, format="PNG")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples/grid", [grid], step=step)
            elif isinstance(logger, TensorBoardLogger):
                arr = np.asarray(grid)
                arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
                logger.experiment.add_image("samples/grid", arr, step)


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
