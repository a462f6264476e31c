"""Gaussian diffusion with guided-diffusion semantics, in latent space.

The training objective is Improved DDPM's hybrid loss (Nichol & Dhariwal 2021):
L_simple on the chosen target (eps, v or x0) trains the mean, and
lambda * L_vlb with a stop-gradient on the mean trains the learned variance.
Differences from guided-diffusion, on purpose:
  - no clipping of the predicted x0 (latents are not in [-1, 1]; flag `clip_x0`),
  - L_0 is a continuous Gaussian NLL (latents are not 8-bit pixels),
  - v-prediction (Salimans & Ho 2022) as a third parametrisation.
Shapes: x (B, C, H, W); t (B,) long, indices into THIS schedule (which may be a
respaced one, see respace.py); the model output is (B, C, H, W), or (B, 2C, H, W)
with learn_sigma (prediction first, variance interpolation v last).
"""

from __future__ import annotations

import math

import torch

from latent_diffusion.diffusion.losses import gaussian_nll, mean_flat, normal_kl
from latent_diffusion.diffusion.schedule import DiffusionSchedule
from latent_diffusion.diffusion.timestep_sampler import UniformSampler
from latent_diffusion.utils.errors import UserError

PREDICTIONS = ("eps", "v", "x0")
LOSSES = ("hybrid", "mse")


class GaussianDiffusion:
    def __init__(
        self,
        betas,
        prediction: str = "eps",
        learn_sigma: bool = True,
        loss: str = "hybrid",
        lambda_vlb: float = 0.001,
        rescale_timesteps: bool = False,
        clip_x0: bool = False,
        fixed_variance: str = "large",
        snr_gamma: float | None = None,
        timestep_map=None,
        original_num_steps: int | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise UserError(
                f"diffusion.prediction={prediction!r} is not known; use one of "
                f"{', '.join(PREDICTIONS)}."
            )
        if loss not in LOSSES:
            raise UserError(
                f"diffusion.loss={loss!r} is not known; use one of {', '.join(LOSSES)}."
            )
        if loss == "hybrid" and not learn_sigma:
            raise UserError(
                "diffusion.loss=hybrid needs diffusion.learn_sigma=true: the VLB term only trains "
                "the variance. Use diffusion.loss=mse for a fixed variance."
            )
        if loss == "mse" and learn_sigma:
            raise UserError(
                "diffusion.loss=mse with diffusion.learn_sigma=true leaves the variance channels "
                "untrained. Use diffusion.loss=hybrid, or set diffusion.learn_sigma=false."
            )
        if snr_gamma is not None and not float(snr_gamma) > 0:
            raise UserError(
                f"diffusion.snr_gamma={snr_gamma!r}: use a positive number (5 in Min-SNR) or null."
            )
        if fixed_variance not in ("large", "small"):
            raise UserError(f"diffusion.fixed_variance={fixed_variance!r}: use 'large' or 'small'.")
        self.schedule = s = DiffusionSchedule(betas, timestep_map)
        self.num_timesteps = s.num_timesteps
        self.original_num_steps = original_num_steps or s.num_timesteps
        self.prediction = prediction
        self.learn_sigma = learn_sigma
        self.loss = loss
        self.lambda_vlb = float(lambda_vlb)
        self.rescale_timesteps = rescale_timesteps
        self.clip_x0 = clip_x0
        self.fixed_variance = fixed_variance
        self.snr_gamma = None if snr_gamma is None else float(snr_gamma)
        # the training loop draws t from it; create_diffusion swaps in the configured one
        self.timestep_sampler = UniformSampler(self.num_timesteps)

    # ---------------------------------------------------------------- model calls
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Index into this schedule -> the timestep the denoiser was trained with."""
        mapped = self.schedule.original_timesteps(t)
        if self.rescale_timesteps:  # guided-diffusion's option: t always in [0, 1000)
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def call_model(self, model_fn, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs):
        """model_fn(x_t, mapped t, **kw); checks the channel count once, where it matters."""
        out = model_fn(x_t, self.model_timesteps(t), **model_kwargs)
        want = x_t.shape[1] * (2 if self.learn_sigma else 1)
        if out.shape[1] != want:
            raise UserError(
                f"the denoiser returns {out.shape[1]} channels for {x_t.shape[1]} latent channels; "
                f"with diffusion.learn_sigma={self.learn_sigma} it must return {want} "
                "(set model out_channels accordingly)."
            )
        return out

    # ------------------------------------------------------------ forward process
    def q_sample(self, x0, t, noise=None):
        """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps (DDPM eq. 4)."""
        noise = torch.randn_like(x0) if noise is None else noise
        s = self.schedule
        return (
            s.at("sqrt_alphas_cumprod", t, x0) * x0
            + s.at("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x0) (DDPM eq. 6-7) -> (mean, variance, log_variance_clipped)."""
        s = self.schedule
        mean = (
            s.at("posterior_mean_coef1", t, x_t) * x0 + s.at("posterior_mean_coef2", t, x_t) * x_t
        )
        return (
            mean,
            s.at("posterior_variance", t, x_t),
            s.at("posterior_log_variance_clipped", t, x_t),
        )

    # ---------------------------------------------- eps <-> x0 <-> v conversions
    # With a_t = sqrt(acp_t), s_t = sqrt(1 - acp_t): x_t = a x0 + s eps and
    # v = a eps - s x0 (Salimans & Ho 2022, sec. 4); a^2 + s^2 = 1.
    def _a_s(self, t, x):
        s = self.schedule
        return s.at("sqrt_alphas_cumprod", t, x), s.at("sqrt_one_minus_alphas_cumprod", t, x)

    def x0_from_eps(self, x_t, t, eps):
        a, s = self._a_s(t, x_t)
        return (x_t - s * eps) / a

    def eps_from_x0(self, x_t, t, x0):
        a, s = self._a_s(t, x_t)
        return (x_t - a * x0) / s

    def x0_from_v(self, x_t, t, v):
        a, s = self._a_s(t, x_t)
        return a * x_t - s * v

    def eps_from_v(self, x_t, t, v):
        a, s = self._a_s(t, x_t)
        return s * x_t + a * v

    def v_from(self, x0, eps, t):
        a, s = self._a_s(t, x0)
        return a * eps - s * x0

    def split_output(self, model_out, x_t):
        """(B, C or 2C, H, W) -> (prediction (B, C, ...), variance interpolation v or None)."""
        C = x_t.shape[1]
        if self.learn_sigma:
            return model_out[:, :C], model_out[:, C:]
        return model_out, None

    def predict_x0_eps(self, pred, x_t, t):
        """The prediction channels, whatever the parametrisation -> (x0, eps)."""
        if self.prediction == "eps":
            x0 = self.x0_from_eps(x_t, t, pred)
        elif self.prediction == "x0":
            x0 = pred
        else:
            x0 = self.x0_from_v(x_t, t, pred)
        if self.clip_x0:  # pixels only: latents are unbounded, clamping them would bias x0
            x0 = x0.clamp(-1, 1)
        eps = (
            pred
            if (self.prediction == "eps" and not self.clip_x0)
            else self.eps_from_x0(x_t, t, x0)
        )
        return x0, eps

    # ------------------------------------------------------------ reverse process
    def p_mean_variance(self, model_out, x_t, t):
        """p(x_{t-1} | x_t) from a model output -> dict(mean, variance, log_variance, pred_x0,
        pred_eps).

        Computed in x_t's dtype (samplers pass a float64 state).
        """
        s = self.schedule
        model_out = model_out.to(x_t.dtype)
        pred, var_v = self.split_output(model_out, x_t)
        if self.learn_sigma:
            # Improved DDPM eq. 15: the net outputs v in [-1, 1] (not enforced) and the
            # log variance interpolates between log beta_tilde_t (v = -1) and log beta_t (v = +1).
            min_log = s.at("posterior_log_variance_clipped", t, x_t)
            max_log = s.at("log_betas", t, x_t)
            frac = (var_v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:
            if self.fixed_variance == "large":
                log_var = s.at("log_variance_fixed_large", t, x_t).expand_as(x_t)
            else:
                log_var = s.at("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        x0, eps = self.predict_x0_eps(pred, x_t, t)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return dict(
            mean=mean, variance=torch.exp(log_var), log_variance=log_var, pred_x0=x0, pred_eps=eps
        )

    # ------------------------------------------------------------------ training
    def sample_timesteps(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """Uniform t ~ U{0..T-1}, shape (B,) long."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(
            0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device
        )
        return t.to(device) if device is not None else t

    def target(self, x0, noise, t):
        """What the prediction channels regress on (L_simple, DDPM eq. 14)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from(x0, noise, t)

    def mse_weight(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023) of the L_simple term -> (B,), or 1.

        Each timestep is a task; the low-noise ones (huge SNR) dominate the gradient of
        an x0 loss and the high-noise ones that of an eps loss. Min-SNR caps the x0-space
        weight at gamma: w_x0 = min(SNR, gamma), SNR = alpha_bar / (1 - alpha_bar). An eps
        error e is an x0 error e / sqrt(SNR), a v error one of e sqrt(1 - alpha_bar), so
        the weights of the targets we regress on are min(SNR, gamma) / SNR (eps),
        min(SNR, gamma) / (SNR + 1) (v) and min(SNR, gamma) (x0).
        """
        if self.snr_gamma is None:
            return torch.ones((), dtype=like.dtype, device=like.device)
        acp = self.schedule.at("alphas_cumprod", t, t.to(torch.float64))  # (B,) float64
        snr = acp / (1 - acp)
        capped = snr.clamp(max=self.snr_gamma)
        w = {"eps": capped / snr, "v": capped / (snr + 1), "x0": capped}[self.prediction]
        return w.to(like.dtype)

    def vb_terms_bpd(self, frozen_out, x0, x_t, t):
        """L_{t-1} = KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, L_0 = -log p(x0|x1)
        for t = 0; mean over dims, in bits per dim (as guided-diffusion) -> (B,)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(frozen_out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(
            2.0
        )
        nll = mean_flat(gaussian_nll(x0, p["mean"], p["log_variance"])) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_fn, x0, t, noise=None, model_kwargs=None) -> dict:
        """Hybrid loss per sample -> dict(loss=(B,), mse=(B,), vb=(B,)).

        loss = mse + lambda_vlb * T * vb: L_vlb = sum_t L_t ~ T * E_t[L_t], so with
        lambda = 0.001 and T = 1000 this is guided-diffusion's `mse + vb` (RESCALED_MSE).
        `vb` is reported unweighted, in bits/dim; zero when the variance is fixed.
        """
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)  # (B, C, H, W)
        model_out = self.call_model(model_fn, x_t, t, **(model_kwargs or {}))
        pred, var_v = self.split_output(model_out, x_t)
        mse = mean_flat(
            (self.target(x0, noise, t) - pred.float()) ** 2
        )  # (B,), reported unweighted
        weighted = self.mse_weight(t, mse) * mse
        if self.learn_sigma:
            # Stop-gradient on the mean (Improved DDPM sec. 3.1): the VLB trains only the
            # variance channels; the mean is trained by L_simple alone.
            frozen_out = torch.cat([pred.detach(), var_v], dim=1)
            vb = self.vb_terms_bpd(frozen_out.float(), x0, x_t, t)
            loss = weighted + self.lambda_vlb * self.num_timesteps * vb
        else:
            vb = torch.zeros_like(mse)
            loss = weighted
        return dict(loss=loss, mse=mse, vb=vb)
