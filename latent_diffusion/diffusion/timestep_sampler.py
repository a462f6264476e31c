"""Which timesteps a training batch sees: uniform, or importance-sampled (Improved DDPM sec. 3.3).

Both return (t (B,) long, weights (B,) float): multiply the per-sample loss by
the weights so that the estimate of E_t[L_t] stays unbiased. Under DDP, gather
t and the losses of all ranks before `update`, so that every rank keeps the same
history (and, with equal seeds, draws from the same distribution).
"""

from __future__ import annotations

import numpy as np
import torch

from latent_diffusion.utils.errors import UserError


class UniformSampler:
    """t ~ U{0..T-1}, weights 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(self, batch_size: int, generator=None, device=None):
        p = torch.as_tensor(self.weights() / self.weights().sum())
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.multinomial(p.to(gen_device), batch_size, replacement=True, generator=generator)
        w = 1.0 / (len(p) * p.to(gen_device)[t])
        return t.to(device), w.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores the losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentResampler(UniformSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last `history` losses at t, mixed with a
    little uniform mass; uniform until every t has a full history (guided-diffusion's
    resample.py). Improved DDPM used it to make L_vlb trainable alone."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history, self.uniform_prob = history, uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not (self.loss_counts == self.history).all():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt((self.loss_history**2).mean(axis=-1))
        w = w / w.sum() * (1 - self.uniform_prob)
        return w + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for tt, loss in zip(t.tolist(), losses.detach().float().cpu().tolist(), strict=True):
            if self.loss_counts[tt] == self.history:  # drop the oldest
                self.loss_history[tt, :-1] = self.loss_history[tt, 1:]
                self.loss_history[tt, -1] = loss
            else:
                self.loss_history[tt, self.loss_counts[tt]] = loss
                self.loss_counts[tt] += 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64)
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64)


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}


def create_timestep_sampler(name: str, num_timesteps: int):
    if name not in TIMESTEP_SAMPLERS:
        raise UserError(
            f"diffusion.timestep_sampler={name!r} is not known; use one of "
            f"{', '.join(TIMESTEP_SAMPLERS)}."
        )
    return TIMESTEP_SAMPLERS[name](num_timesteps)
