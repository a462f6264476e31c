"""NoisyClassifier: guided-diffusion's classifier_train.py as a LightningModule.

Each step: latents z0 of the batch (the frozen VAE, or the latent cache), optional
noise augmentation of z0, t drawn over the WHOLE schedule (optionally weighted toward
small t, where guidance decides the details and a classifier has most to learn),
x_t = q_sample(z0, t) and a cross-entropy on p(y | x_t, t). Weight decay, dropout and
the noise augmentation fight overfitting, the classifier's main failure on small data
sets (guided-diffusion used weight decay 0.05 and dropout 0.1 on ImageNet-64). An EMA of
the weights is what validation and the export use.

Validation reports accuracy per timestep bucket: every validation image is classified
once in each bucket (t seeded per batch and bucket), so the curve moves only when the
model does and each bucket sees the same images.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.diffusion import GaussianDiffusion
from latent_diffusion.lit.ema import EMA
from latent_diffusion.lit.latents import latents_from_batch
from latent_diffusion.lit.module import step_generators


def timestep_probs(T: int, small_t_power: float) -> torch.Tensor:
    """p(t) over t = 0..T-1, proportional to (1 - t/T)^power: 0 = uniform (guided-diffusion's
    choice), 1 = linearly more weight on small t (little noise)."""
    t = torch.arange(T, dtype=torch.float64)
    w = (1 - t / T) ** float(small_t_power)
    return w / w.sum()


def bucket_edges(T: int, n: int) -> list[tuple[int, int]]:
    """n equal timestep ranges [lo, hi) covering 0..T-1."""
    cuts = [round(i * T / n) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


class NoisyClassifier(L.LightningModule):
    def __init__(
        self,
        classifier: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        class_names: list[str],
        latent_shape: tuple[int, int, int],
        vae=None,
        ema_decay: float = 0.999,
        warmup_steps: int = 100,
        anneal_steps: int | None = None,
        small_t_power: float = 0.0,
        latent_noise: float = 0.0,
        val_buckets: int = 4,
        seed: int = 0,
    ):
        super().__init__()
        self.classifier = classifier
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.class_names = list(class_names)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.warmup_steps = int(warmup_steps)
        self.anneal_steps = anneal_steps
        self.latent_noise = float(latent_noise)
        self.seed = int(seed)
        self.t_probs = timestep_probs(diffusion.num_timesteps, small_t_power)
        self.buckets = bucket_edges(diffusion.num_timesteps, int(val_buckets))
        self.ema = EMA(classifier, decay=ema_decay)
        object.__setattr__(self, "vae", vae)  # frozen, referenced not saved (as LatentDiffusion)
        self.save_hyperparameters(
            {
                "class_names": self.class_names,
                "latent_shape": list(self.latent_shape),
                "ema_decay": ema_decay,
                "small_t_power": small_t_power,
                "latent_noise": latent_noise,
            }
        )

    def on_fit_start(self) -> None:
        if self.vae is not None:
            self.vae.to(self.device)

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The classifier as the samplers call it: t mapped as the denoiser sees it."""
        return self.classifier(x_t, self.diffusion.model_timesteps(t))  # (B, K)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int):
        g_cpu, g_dev = step_generators(self.seed, self.global_rank, self.global_step, self.device)
        z = latents_from_batch(batch, self.vae, g_dev)  # (B, c, h, w)
        y = batch["y"]  # (B,)
        if self.latent_noise > 0:  # augmentation: no two epochs show the same z0
            z = z + self.latent_noise * torch.randn(
                z.shape, generator=g_dev, device=z.device, dtype=z.dtype
            )
        t = torch.multinomial(self.t_probs, z.shape[0], replacement=True, generator=g_cpu).to(
            z.device
        )  # (B,)
        noise = torch.randn(z.shape, generator=g_dev, device=z.device, dtype=z.dtype)
        logits = self.logits(self.diffusion.q_sample(z, t, noise).float(), t)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.classifier)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.classifier.parameters())
        warm = max(1, self.warmup_steps)
        total = self.anneal_steps

        def lr_factor(s: int) -> float:
            # linear warm-up, then guided-diffusion's anneal_lr: linear decay to 0 at the last step
            f = min(1.0, (s + 1) / warm)
            return f * max(0.0, 1 - s / total) if total else f

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int):
        g = torch.Generator().manual_seed(2000 + batch_idx)
        z = latents_from_batch(batch, self.vae, g if str(self.device) == "cpu" else None)
        y, B = batch["y"], z.shape[0]
        correct, losses = [], []
        with self.ema.swap_into(self.classifier):
            for lo, hi in self.buckets:
                t = torch.randint(lo, hi, (B,), generator=g).to(z.device)
                noise = torch.randn(z.shape, generator=g).to(z.device, z.dtype)
                logits = self.logits(self.diffusion.q_sample(z, t, noise).float(), t)
                hit = (logits.argmax(-1) == y).float().mean()
                self.log(f"val/acc_t{lo}-{hi - 1}", hit, sync_dist=True, batch_size=B)
                correct.append(hit)
                losses.append(F.cross_entropy(logits, y))
        self.log(
            "val/acc", torch.stack(correct).mean(), prog_bar=True, sync_dist=True, batch_size=B
        )
        self.log("val/loss", torch.stack(losses).mean(), sync_dist=True, batch_size=B)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.vae is not None:
            from latent_diffusion.vae.resolve import vae_reference

            checkpoint["vae_reference"] = vae_reference(self.vae)
