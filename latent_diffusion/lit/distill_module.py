"""ConsistencyDistillation: latent consistency distillation of a guided teacher (Lightning glue).

The maths live in diffusion/consistency.py; this module holds the three networks and
wires them into Lightning:

- `student`: initialised from the teacher, with a zero-initialised guidance embedding
  (models/unet.py GuidedClassEmbedding); the only trainable weights;
- `target`: LCM's target network theta^- = mu theta^- + (1 - mu) theta after each step
  (mu = target_decay, 0.95 as LCM); a submodule, so it is in the checkpoint and a resumed
  run continues the same schedule;
- `ema`: the slow EMA of the student (with warm-up) that validation and the export use, as
  in consistency models' released code (a separate, slower average than the target);
- the teacher and the VAE are frozen and deliberately not submodules: they stay out of the
  optimizer and the checkpoint (which records the teacher's weights hash instead).

Every training draw (grid point, noise, w, posterior sample) comes from generators seeded by
(seed, rank, step), as in lit/module.py, so a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from latent_diffusion.diffusion import GaussianDiffusion
from latent_diffusion.diffusion.consistency import consistency_distillation_loss, skipping_grid
from latent_diffusion.lit.ema import EMA
from latent_diffusion.lit.module import step_generators


class ConsistencyDistillation(L.LightningModule):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        class_names: list[str],
        latent_shape: tuple[int, int, int],
        guidance_range: tuple[float, float],
        vae=None,
        grid_points: int = 50,
        target_decay: float = 0.95,
        ema_decay: float = 0.999,
        warmup_steps: int = 100,
        loss: str = "huber",
        seed: int = 0,
    ):
        super().__init__()
        self.student = student
        self.target = copy.deepcopy(student).requires_grad_(False).eval()
        self.ema = EMA(student, decay=ema_decay)
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.class_names = list(class_names)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.guidance_range = (float(guidance_range[0]), float(guidance_range[1]))
        self.grid = skipping_grid(diffusion.num_timesteps, int(grid_points))
        self.target_decay = float(target_decay)
        self.warmup_steps = int(warmup_steps)
        self.loss_type = str(loss)
        self.seed = int(seed)
        # Not submodules (module doc): object.__setattr__ bypasses nn.Module's registration.
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        object.__setattr__(self, "vae", vae)

    @property
    def null_class(self) -> int:
        return int(self.teacher.null_class)

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)
        if self.vae is not None:
            self.vae.to(self.device)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()  # the target only ever gives regression targets: no dropout
        return self

    # ----------------------------------------------------------------- the objective
    def distillation_loss(
        self, batch: dict, g_cpu: torch.Generator, g_dev: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Mean consistency loss on one batch -> (loss, {"loss": (B,), "t": (B,), "w": (B,)})."""
        from latent_diffusion.lit.latents import latents_from_batch

        z0 = latents_from_batch(batch, self.vae, g_dev)  # (B, c, h, w)
        y = batch["y"]  # (B,)
        lo, hi = self.guidance_range
        w = (lo + (hi - lo) * torch.rand(z0.shape[0], generator=g_cpu)).to(z0.device)  # (B,)
        out = consistency_distillation_loss(
            self.diffusion, self.student, self.target, self.teacher, z0, y, w, self.grid,
            self.null_class, generator=g_cpu, loss=self.loss_type,
        )  # fmt: skip
        return out["loss"].mean(), {**out, "w": w}

    def training_step(self, batch: dict, batch_idx: int):
        g_cpu, g_dev = step_generators(self.seed, self.global_rank, self.global_step, self.device)
        torch.manual_seed((g_cpu.initial_seed() + 1) % 2**63)  # dropout, as lit/module.py
        loss, out = self.distillation_loss(batch, g_cpu, g_dev)
        self.log("train/loss", loss, prog_bar=True)
        # high-noise and low-noise halves of the grid behave differently: log both
        half = out["t"] >= self.diffusion.num_timesteps // 2
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            for name, m in (("train/loss_t_high", half), ("train/loss_t_low", ~half)):
                if m.any():
                    self.log(name, out["loss"][m].mean())
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # target and EMA right after the weights change, before ModelCheckpoint saves
        with torch.no_grad():
            target = list(self.target.parameters())
            online = [p.detach() for p in self.student.parameters()]
            torch._foreach_lerp_(target, online, 1.0 - self.target_decay)
        self.ema.update(self.student)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.student.parameters())
        warm = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int):
        """The consistency loss of the EMA student on fixed draws (seeded per batch), so the
        curve moves only when the student does."""
        g = torch.Generator().manual_seed(1000 + batch_idx)
        with self.ema.swap_into(self.student):
            loss, _ = self.distillation_loss(batch, g, g if self.device.type == "cpu" else None)
        B = batch["y"].shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
