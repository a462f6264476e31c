"""LatentDiffusion: guided-diffusion's training objective around a frozen VAE.

The denoiser (models/) and the Gaussian diffusion (diffusion/) do the work;
this module only wires them into Lightning:

- the VAE is frozen and deliberately NOT a registered submodule: it stays out
  of the optimizer, out of the EMA and out of the checkpoint (the checkpoint
  records its path, hash and latent statistics instead); we move it to the
  training device ourselves;
- the EMA shadow of the denoiser alone lives here as a submodule of buffers,
  so it is saved with the checkpoint and used for validation and export;
- batches are pixels ({"x", "y"}: encoded on the fly, or used as they are for a
  pixel-space baseline) or cached posteriors ({"mean", "std", "y"}: a fresh
  latent is drawn every step, so the cache does not freeze the VAE's noise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import nn

from latent_diffusion.diffusion import GaussianDiffusion, UniformSampler
from latent_diffusion.lit.ema import EMA

if TYPE_CHECKING:
    from latent_diffusion.pipeline import LatentDiffusionPipeline


def step_generators(
    seed: int, rank: int, step: int, device
) -> tuple[torch.Generator, torch.Generator]:
    """(CPU, device) generators seeded from (seed, global rank, global step).

    DDP ranks draw different t and noise (one global seed would give every rank the
    same draws, and the gradient average less independent samples), and a resumed run
    draws what the uninterrupted one did whatever the global RNG went through."""
    s = ((int(seed) * 1_000_003 + int(rank)) * 1_000_003 + int(step)) % 2**63
    g_cpu = torch.Generator().manual_seed(s)
    device = torch.device(device)
    g_dev = g_cpu if device.type == "cpu" else torch.Generator(device).manual_seed(s)
    return g_cpu, g_dev


class LatentDiffusion(L.LightningModule):
    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        class_names: list[str],
        latent_shape: tuple[int, int, int],
        vae=None,
        ema_decay: float = 0.9999,
        warmup_steps: int = 500,
        max_bad_steps: int = 20,
        seed: int = 0,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.class_names = list(class_names)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.warmup_steps = int(warmup_steps)
        self.max_bad_steps = int(max_bad_steps)
        self.seed = int(seed)
        self.ema = EMA(self.plain_denoiser, decay=ema_decay)
        # Not a submodule (see module docstring): object.__setattr__ bypasses nn.Module.
        object.__setattr__(self, "vae", vae)
        self.save_hyperparameters(
            {
                "class_names": self.class_names,
                "latent_shape": list(self.latent_shape),
                "ema_decay": ema_decay,
                "warmup_steps": warmup_steps,
            }
        )
        self._bad_steps = 0
        self.skipped_steps = 0
        self._drop_grads = False  # a skipped step under DDP: see _skip_step

    @property
    def plain_denoiser(self) -> nn.Module:
        """The denoiser without a torch.compile wrapper (EMA and export use its own names)."""
        return getattr(self.denoiser, "_orig_mod", self.denoiser)

    # ------------------------------------------------------------------ latents
    def on_fit_start(self) -> None:
        if self.vae is not None:
            self.vae.to(self.device)

    def step_generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(CPU, device) generators for this step's diffusion draws (t, noise, posterior sample)."""
        return step_generators(self.seed, self.global_rank, self.global_step, self.device)

    def latents_from_batch(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Unit-variance latents z (B, c, h, w) for the denoiser (or pixels for a pixel
        baseline)."""
        from latent_diffusion.lit.latents import latents_from_batch

        return latents_from_batch(batch, self.vae, generator)

    # ----------------------------------------------------------------- training
    def diffusion_loss(
        self,
        batch: dict,
        g_cpu: torch.Generator | None = None,
        g_dev: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The training objective on one batch -> (weighted mean loss, t (B,), per-sample losses).
        Shared by training_step and the benchmarks' bare loop, so both time the same step."""
        z = self.latents_from_batch(batch, g_dev)  # (B, c, h, w)
        y = batch["y"]  # (B,); the denoiser drops labels to the null class with p_uncond
        # t ~ U{0..T-1}, or importance-sampled with weights 1/(T p_t) (Improved DDPM sec. 3.3)
        t, w = self.diffusion.timestep_sampler.sample(
            z.shape[0], generator=g_cpu, device=z.device
        )  # (B,), (B,)
        noise = torch.randn(z.shape, generator=g_dev, device=z.device, dtype=z.dtype)
        losses = self.diffusion.training_losses(
            lambda x_t, tt: self.denoiser(x_t, tt, y), z, t, noise=noise
        )
        return (losses["loss"] * w).mean(), t, losses

    def training_step(self, batch: dict, batch_idx: int):
        g_cpu, g_dev = self.step_generators()
        # The denoiser's own draws (label drop to the null class, dropout) use the global RNG.
        # Seeding it from this step's seed makes them a function of (seed, rank, step) too, so a
        # resumed run, mid-epoch included, draws what the uninterrupted one did whatever
        # prefetching, validation or callbacks did to the global RNG in between.
        torch.manual_seed((g_cpu.initial_seed() + 1) % 2**63)
        loss, t, losses = self.diffusion_loss(batch, g_cpu, g_dev)
        t_sampler = self.diffusion.timestep_sampler  # which t to train on, not an image sampler
        if not isinstance(t_sampler, UniformSampler):
            # every rank must see the same loss history: gather before updating
            t_all, l_all = self.all_gather((t, losses["loss"].detach()))
            t_sampler.update(t_all.reshape(-1), l_all.reshape(-1))
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            # all ranks skip together: one rank skipping its backward would hang DDP's all-reduce
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            return self._skip_step(loss)
        self._bad_steps = 0
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", losses["mse"].mean())
        self.log("train/vb", losses["vb"].mean())
        # The loss split by timestep quartile (guided-diffusion's log_loss_dict):
        # q0 (low noise) and q3 (high noise) behave very differently. Only on
        # logging steps: `m.any()` is a device-to-host sync that stalls a GPU.
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            quartile = (4 * t // self.diffusion.num_timesteps).clamp(max=3)
            for q in range(4):
                m = quartile == q
                if m.any():
                    self.log(f"train/loss_q{q}", losses["loss"][m].mean())
        return loss

    def _skip_step(self, loss: torch.Tensor):
        """A non-finite loss skips the step (returning None makes Lightning skip
        backward and the optimizer step); too many in a row stop the run."""
        self._bad_steps += 1
        self._drop_grads = self.trainer.world_size > 1
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self._bad_steps > self.max_bad_steps:
            raise FloatingPointError(
                f"{self._bad_steps} non-finite losses in a row (last {loss.item()}); stopping. "
                "The last good checkpoint is in checkpoints/last.ckpt. Lower optimizer.lr or check "
                "the latent statistics (latent_stats.json)."
            )
        if self._drop_grads:
            # Lightning refuses None from a DDP training_step: the ranks' backward passes meet
            # in DDP's gradient all-reduce. Every rank skips together (training_step), so each
            # runs its backward and on_before_optimizer_step drops the gradients: the optimizer
            # passes over parameters without one (no update, no moment or step-count change).
            return loss
        return None

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_grads:
            optimizer.zero_grad(set_to_none=True)
            self._drop_grads = False

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after the weights change, before any callback's on_train_batch_end:
        # ModelCheckpoint saves there, and its checkpoint must hold this step's EMA.
        if self._bad_steps == 0:
            self.ema.update(self.plain_denoiser)

    def configure_optimizers(self):
        """The optimizer of the config and a linear LR warm-up over warmup_steps, stepped per
        step."""
        opt = self.optimizer_factory(params=self.denoiser.parameters())
        warm = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int):
        """Hybrid loss of the EMA denoiser on fixed timesteps and noise (seeded per batch),
        so the curve moves only when the model does."""
        z = self.latents_from_batch(batch)
        g = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
        B = z.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=g).to(z.device)
        noise = torch.randn(z.shape, generator=g).to(z.device, z.dtype)
        y = batch["y"]
        with self.ema.swap_into(self.plain_denoiser):
            losses = self.diffusion.training_losses(
                lambda x_t, tt: self.denoiser(x_t, tt, y), z, t, noise=noise
            )
        self.log("val/loss", losses["loss"].mean(), prog_bar=True, sync_dist=True, batch_size=B)
        self.log("val/mse", losses["mse"].mean(), sync_dist=True, batch_size=B)
        self.log("val/vb", losses["vb"].mean(), sync_dist=True, batch_size=B)

    # ----------------------------------------------------------------- sampling
    @contextmanager
    def ema_pipeline(self) -> Iterator[LatentDiffusionPipeline]:
        """The EMA weights as a LatentDiffusionPipeline (eval mode), for the training grid and
        the quality callback: they then sample exactly as `sample` does from the export.
        The training weights and train/eval mode are restored on exit."""
        from latent_diffusion.pipeline import LatentDiffusionPipeline

        was_training = self.denoiser.training
        with self.ema.swap_into(self.plain_denoiser):
            self.plain_denoiser.eval()
            try:
                yield LatentDiffusionPipeline(
                    self.plain_denoiser,
                    self.diffusion,
                    self.class_names,
                    self.latent_shape,
                    self.vae,
                )
            finally:
                self.denoiser.train(was_training)

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The VAE is referenced, not stored (design: no doubled checkpoints).
        if self.vae is not None:
            from latent_diffusion.vae.resolve import vae_reference

            checkpoint["vae_reference"] = vae_reference(self.vae)
        checkpoint["skipped_steps"] = self.skipped_steps
        checkpoint["timestep_sampler"] = self.diffusion.timestep_sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        if "timestep_sampler" in checkpoint:
            self.diffusion.timestep_sampler.load_state_dict(checkpoint["timestep_sampler"])
