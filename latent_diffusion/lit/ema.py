"""Exponential moving average of the denoiser's weights (and of nothing else).

theta_ema <- beta * theta_ema + (1 - beta) * theta, after every optimizer step.
Samples come from theta_ema (ADM, DDPM, DiT all do). Two things differ from the
obvious implementation:

- Warm-up: beta_n = min(decay, (1 + n) / (10 + n)) (the TensorFlow / DDPM
  schedule). With a flat 0.9999 the average is still ~37% the random init
  after 10k steps and samples look like noise for a long time.
- Only the denoiser: Lightning's EMAWeightAveraging deep-copies the whole
  LightningModule, frozen VAE included, and doubles checkpoints. Here the
  shadow weights are fp32 buffers of this module, so as a submodule of the
  LightningModule they follow it across devices, land in its checkpoint, and add
  no parameter to the optimizer.

Optional, EDM style (Karras et al. 2022): a half-life in training images,
beta = 0.5 ** (images_per_step / half_life_images), independent of batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the module and prefixes its state_dict keys with "_orig_mod.";
    # the EMA always works on the plain module so names match either way.
    return getattr(model, "_orig_mod", model)


def _key(name: str) -> str:
    # Buffer names may not contain '.'; '/' keeps the parameter path readable in checkpoints.
    return name.replace(".", "/")


class EMA(nn.Module):
    """Shadow copy of `model`'s floating-point parameters and buffers.

    Call `update(model, step)` after each optimizer step (step = optimizer steps so
    far, e.g. trainer.global_step); `swap_into(model)` for validation and sampling.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        warmup: bool = True,
        half_life_images: float | None = None,
    ):
        super().__init__()
        model = _unwrap(model)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.half_life_images = half_life_images
        self.names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                self.register_buffer(_key(name), tensor.detach().float().clone())
        # Number of updates applied and the last step seen: both in the checkpoint, so a
        # resumed run continues the warm-up where it stopped.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_step", torch.full((), -1, dtype=torch.long))

    def shadow(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by the model's own state_dict names."""
        return {name: getattr(self, _key(name)) for name in self.names}

    def decay_at(self, n: int, images_per_step: int | None = None) -> float:
        """beta for the (n+1)-th update: min(decay, (1+n)/(10+n)) with warm-up."""
        if self.half_life_images is not None:
            if not images_per_step:
                raise ValueError("EMA with half_life_images needs images_per_step in update()")
            beta = 0.5 ** (images_per_step / self.half_life_images)
        else:
            beta = self.decay
        if self.warmup:
            beta = min(beta, (1 + n) / (10 + n))
        return beta

    @torch.no_grad()
    def update(
        self, model: nn.Module, step: int | None = None, images_per_step: int | None = None
    ) -> bool:
        """One EMA step from the current model weights. Returns False when skipped.

        Called with the same `step` twice (gradient accumulation: several
        on_train_batch_end per optimizer step) it updates once.
        """
        if step is not None:
            if int(step) == int(self.last_step):
                return False
            self.last_step.fill_(int(step))
        beta = self.decay_at(int(self.num_updates), images_per_step)
        current = _unwrap(model).state_dict()
        shadow = [getattr(self, _key(n)) for n in self.names]
        source = [
            current[n].detach().to(device=s.device, dtype=s.dtype)
            for n, s in zip(self.names, shadow, strict=True)
        ]
        # theta_ema <- beta * theta_ema + (1 - beta) * theta  ==  lerp(theta_ema, theta, 1 - beta)
        torch._foreach_lerp_(shadow, source, 1.0 - beta)
        self.num_updates += 1
        return True

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (cast to its dtype and device)."""
        current = _unwrap(model).state_dict()
        for name, avg in self.shadow().items():
            current[name].copy_(avg)

    @contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """`with ema.swap_into(denoiser): sample(...)` — EMA weights inside, training weights
        after."""
        averaged = set(self.names)
        plain = _unwrap(model)
        backup = {n: t.detach().clone() for n, t in plain.state_dict().items() if n in averaged}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                current = plain.state_dict()
                for name, saved in backup.items():
                    current[name].copy_(saved)

    def extra_repr(self) -> str:
        return (
            f"tensors={len(self.names)}, decay={self.decay}, warmup={self.warmup}, "
            f"half_life_images={self.half_life_images}"
        )
