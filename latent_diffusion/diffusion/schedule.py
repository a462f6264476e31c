"""Noise schedules and the closed-form coefficients of the forward process.

Everything here is float64 numpy: the products of 1000 numbers close to 1
lose digits in float32 (alphas_cumprod near t = T is ~4e-5 for the linear
schedule), and the samplers divide by these numbers. Coefficients are cast to
the tensor's dtype only when they are gathered (`extract`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from latent_diffusion.utils.errors import UserError

SCHEDULES = ("linear", "scaled_linear", "cosine")


def betas_for(schedule: str, T: int = 1000) -> np.ndarray:
    """beta_1..beta_T as float64, shape (T,)."""
    if T < 1:
        raise UserError(f"diffusion.timesteps={T}: the number of diffusion steps must be >= 1.")
    if schedule == "linear":
        # DDPM (Ho et al. 2020) 1e-4..0.02 for T = 1000; guided-diffusion scales the
        # end points by 1000/T so that any T describes the same continuous process.
        scale = 1000.0 / T
        if scale * 0.02 >= 1:
            raise UserError(
                f"diffusion.timesteps={T} is too few for the linear schedule (beta_T = "
                f"{scale * 0.02:.2f} >= 1); "
                "use timesteps >= 21 or diffusion.schedule=cosine."
            )
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    if schedule == "scaled_linear":
        # Latent diffusion's schedule (Rombach et al. 2022; diffusers' "scaled_linear"):
        # linear in sqrt(beta) from 0.00085 to 0.012, scaled by 1000/T like `linear`.
        # Its last alpha_bar is ~4.7e-3 (SNR ~ -23 dB) against ~4e-5 (-44 dB) for
        # DDPM's linear: an eps-prediction error e at t = T becomes an x0 error
        # e / sqrt(alpha_bar_T), i.e. x15 here instead of x160, which is what lets
        # a short-trained latent model start its sampling trajectory on the data.
        scale = 1000.0 / T
        return (
            np.linspace((scale * 0.00085) ** 0.5, (scale * 0.012) ** 0.5, T, dtype=np.float64) ** 2
        )
    if schedule == "cosine":
        # Improved DDPM (Nichol & Dhariwal 2021) eq. 17: alpha_bar(t) = f(t)/f(0),
        # f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), s = 0.008; beta clipped at 0.999
        # so that the last step does not have beta = 1 (a singularity at t = T).
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return np.array(betas, dtype=np.float64)
    raise UserError(
        f"diffusion.schedule={schedule!r} is not known; use one of {', '.join(SCHEDULES)}."
    )


class DiffusionSchedule:
    """The closed forms of the forward process q for one beta sequence (float64 buffers).

    `timestep_map[i]` is the timestep of the ORIGINAL (training) process that index i
    of this schedule stands for: arange(T) for the training schedule, the kept steps
    after respacing. The denoiser is always called with mapped timesteps.
    """

    def __init__(self, betas, timestep_map=None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise UserError("diffusion betas must be a 1-D sequence with 0 < beta <= 1.")
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.timestep_map = (
            np.arange(T, dtype=np.int64)
            if timestep_map is None
            else np.asarray(timestep_map, dtype=np.int64)
        )
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map has shape {self.timestep_map.shape}, expected ({T},)")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # DDPM eq. 7: q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t).
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # beta_tilde_0 = 0: log would be -inf, so (as guided-diffusion) the first entry
        # borrows beta_tilde_1; it is only used as an end point of the learned range.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if T > 1
            else np.array([betas[0]])
        )
        self.posterior_mean_coef1 = (
            betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        # DDPM's sigma_t^2 = beta_t, with beta_tilde_1 at t = 0 for a better L_0 (guided-diffusion's
        # FIXED_LARGE)
        self.log_variance_fixed_large = np.log(
            np.append(self.posterior_variance[1], betas[1:]) if T > 1 else betas
        )
        self._device_cache: dict = {}

    def tensor(self, name: str, device=None, dtype=torch.float64) -> torch.Tensor:
        """A schedule buffer as a torch tensor (shape (T,))."""
        return torch.as_tensor(getattr(self, name), dtype=dtype, device=device)

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Buffer `name` at indices t, broadcast to `like`: (B,) -> (B, 1, 1, 1) in like's dtype.

        The float64 buffer is copied to t's device once and cached: a host-to-device copy
        in every step of a sampling loop would stall the GPU queue.
        """
        key = (name, str(t.device))
        buf = self._device_cache.get(key)
        if buf is None:
            buf = self._device_cache[key] = self.tensor(name, device=t.device)
        return buf[t.long()].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """timestep_map[t] on t's device, (B,) long."""
        key = ("timestep_map", str(t.device))
        buf = self._device_cache.get(key)
        if buf is None:
            buf = self._device_cache[key] = torch.as_tensor(self.timestep_map, device=t.device)
        return buf[t.long()]


def extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] broadcast to `like`'s shape: (B,) indices -> (B, 1, 1, 1) in like's dtype.

    The gather happens in float64 and only the result is cast, so a float64
    sampler state gets float64 coefficients and float32 training gets float32.
    """
    out = torch.as_tensor(arr, dtype=torch.float64, device=t.device)[t.long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
