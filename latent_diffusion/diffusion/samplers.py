"""Samplers in latent space: DDPM (ancestral), DDIM, DPM-Solver++(2M); classifier-free guidance.
LCM's multistep sampler for a distilled student lives in consistency.py and is listed here.

Classifier guidance: every sampler takes `cond_fn(x_t float32, t (B,) model timesteps)
-> s * grad log p(y | x_t)` (classifier_guidance.py); DDPM shifts its mean by it,
DDIM and DPM-Solver++ shift eps. cond_fn=None is the unguided sampler, bit for bit.

All run without clipping of x0 (latents are not bounded). The sampler state x
is float64 and every schedule coefficient is float64; only the denoiser sees
float32. `model_fn(x_t (B,C,H,W) float32, t (B,) long ORIGINAL timesteps)`
returns (B, C or 2C, H, W); build it from a `model(x_t, t, y)` with
`cfg_model_fn`.

Per-image noise: pass `generators`, a list of one torch.Generator per image.
Every draw for image i (the start noise and each ancestral step's noise) comes
from generator i alone, so image i is the same whatever batch it is sampled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from latent_diffusion.diffusion.classifier_guidance import CondFn, condition_mean, condition_score
from latent_diffusion.diffusion.consistency import lcm_sample
from latent_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from latent_diffusion.diffusion.respace import respaced, respaced_for
from latent_diffusion.utils.errors import UserError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The sampler table's default step counts (None = all T training steps), the one place
# every caller (pipeline, sample, callbacks, benchmarks) takes them from. lcm samples a
# distilled consistency student only (consistency.py); its export may name another default.
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 20, "lcm": 4}


# ----------------------------------------------------------------- noise
def generators_from_seeds(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One generator per image, seeded with that image's own seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def draw_noise(shape, generators=None, device=None, dtype=torch.float64) -> torch.Tensor:
    """Standard normal noise of `shape` (B, ...). With a list of B generators, image i's
    noise is drawn from generators[i] only (in float32 on the generator's device, so
    the numbers do not depend on the batch or the sampler's dtype)."""
    if generators is None or isinstance(generators, torch.Generator):
        gen_device = generators.device if generators is not None else device
        noise = torch.randn(shape, generator=generators, device=gen_device)
    else:
        if len(generators) != shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {shape[0]} images")
        noise = torch.stack(
            [torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generators]
        )
    return noise.to(device=device, dtype=dtype)


def _state_dtype(device) -> torch.dtype:
    # float64 for the ODE/SDE state (EDM's choice); MPS has no float64.
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _call(diffusion: GaussianDiffusion, model_fn: ModelFn, x: torch.Tensor, i: int) -> tuple:
    """Evaluate the denoiser at index i of `diffusion` -> (output in x's dtype, t (B,))."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    out = diffusion.call_model(model_fn, x.float(), t)
    return out.to(x.dtype), t


def _grad(
    diffusion: GaussianDiffusion, cond_fn: CondFn, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """cond_fn at (x_t, t) with t given as the denoiser sees it (original, maybe rescaled)."""
    return cond_fn(x.float(), diffusion.model_timesteps(t)).to(x.dtype)  # (B, C, H, W)


# ------------------------------------------------------------------ DDPM
@torch.no_grad()
def ddpm_sample(
    diffusion,
    model_fn: ModelFn,
    shape,
    generators=None,
    steps=None,
    device="cpu",
    progress=None,
    cond_fn: CondFn | None = None,
):
    """Ancestral sampling (DDPM Alg. 2) with p(x_{t-1}|x_t) from `p_mean_variance`: a learned
    variance is honoured, against the respaced betas when `steps` is given. With cond_fn
    the mean moves by Sigma_t * grad (condition_mean)."""
    d = respaced_for(diffusion, steps)
    x = draw_noise(shape, generators, device, _state_dtype(device))  # (B, C, H, W)
    for i in reversed(range(d.num_timesteps)):
        out, t = _call(d, model_fn, x, i)
        p = d.p_mean_variance(out, x, t)
        mean = p["mean"] if cond_fn is None else condition_mean(p, _grad(d, cond_fn, x, t))
        if i > 0:  # no noise at the last step: the output is the mean of p(x0|x1)
            x = mean + torch.exp(0.5 * p["log_variance"]) * draw_noise(
                shape, generators, device, x.dtype
            )
        else:
            x = mean
        if progress:
            progress(d.num_timesteps - i, d.num_timesteps)
    return x.float()


# ------------------------------------------------------------------ DDIM
@torch.no_grad()
def ddim_sample(
    diffusion,
    model_fn: ModelFn,
    shape,
    steps=DEFAULT_STEPS["ddim"],
    eta: float = 0.0,
    generators=None,
    device="cpu",
    progress=None,
    cond_fn: CondFn | None = None,
):
    """DDIM (Song et al. 2021, eq. 12): x_{t-1} = sqrt(acp_prev) x0 + sqrt(1 - acp_prev - sigma^2)
    eps
    + sigma z, sigma = eta sqrt((1-acp_prev)/(1-acp)) sqrt(1 - acp/acp_prev). eta = 0:
    deterministic.
    With cond_fn, eps (and the x0 it implies) is shifted first (condition_score)."""
    d = respaced_for(diffusion, steps)
    s = d.schedule
    x = draw_noise(shape, generators, device, _state_dtype(device))
    for i in reversed(range(d.num_timesteps)):
        out, t = _call(d, model_fn, x, i)
        pred, _ = d.split_output(out, x)  # a learned variance plays no part in DDIM
        x0, eps = d.predict_x0_eps(pred, x, t)
        if cond_fn is not None:
            x0, eps = condition_score(d, x, t, x0, eps, _grad(d, cond_fn, x, t))
        acp, acp_prev = float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i])
        sigma = eta * np.sqrt((1 - acp_prev) / (1 - acp)) * np.sqrt(1 - acp / acp_prev)
        x = np.sqrt(acp_prev) * x0 + np.sqrt(1 - acp_prev - sigma**2) * eps
        if eta > 0 and i > 0:
            x = x + sigma * draw_noise(shape, generators, device, x.dtype)
        if progress:
            progress(d.num_timesteps - i, d.num_timesteps)
    return x.float()


# ------------------------------------------------------------- DPM-Solver++
@torch.no_grad()
def dpmpp_sample(
    diffusion,
    model_fn: ModelFn,
    shape,
    steps=DEFAULT_STEPS["dpmpp"],
    generators=None,
    device="cpu",
    progress=None,
    cond_fn: CondFn | None = None,
):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), data prediction, multistep.

    alpha_t = sqrt(acp), sigma_t = sqrt(1 - acp), lambda_t = log(alpha_t / sigma_t),
    h_i = lambda_{t_i} - lambda_{t_{i-1}}. Time steps as diffusers' default
    (linspace(0, T-1, steps+1) rounded, largest first, the 0 dropped) and a last
    first-order step to sigma = 0, which returns the data prediction. Ending the
    2nd-order steps at t ~ T/steps instead of t = 0 avoids a tiny-over-huge step
    ratio r in the extrapolation (the last steps span most of lambda's range).
    With cond_fn, each data prediction comes from the guided eps (condition_score), so the
    multistep history holds guided predictions, as guided DPM-Solver does.
    """
    if not isinstance(steps, int) or not 1 <= steps <= diffusion.num_timesteps:
        raise UserError(
            f"steps={steps!r}: DPM-Solver++ takes an int in [1, {diffusion.num_timesteps}]."
        )
    T = diffusion.num_timesteps
    ts = (
        np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    )  # e.g. 999, 949, ..., 50
    d = respaced(diffusion, ts)  # index i -> training step ts sorted ascending; keeps the model's t
    n = d.num_timesteps
    acp = d.schedule.alphas_cumprod
    alpha, sigma = np.sqrt(acp), np.sqrt(1 - acp)
    lam = np.log(alpha) - np.log(sigma)
    x = draw_noise(shape, generators, device, _state_dtype(device))  # (B, C, H, W)
    x0_prev, h_prev = None, None
    for i in reversed(range(n)):
        out, t = _call(d, model_fn, x, i)
        pred, _ = d.split_output(out, x)  # only the C prediction channels, never the variance
        x0, eps = d.predict_x0_eps(pred, x, t)  # (B, C, H, W)
        if cond_fn is not None:
            x0, _ = condition_score(d, x, t, x0, eps, _grad(d, cond_fn, x, t))
        if progress:
            progress(n - i, n)
        if i == 0:
            return x0.float()  # first-order step to sigma = 0: x = D = x0
        h = lam[i - 1] - lam[i]
        if x0_prev is None:
            D = x0  # DPM-Solver++(1) (= a DDIM step) at the first step: no history yet
        else:
            r = h_prev / h  # 2M: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma[i - 1] / sigma[i]) * x - alpha[i - 1] * np.expm1(-h) * D
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable")


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpmpp": dpmpp_sample, "lcm": lcm_sample}


def sample(
    sampler: str,
    diffusion,
    model_fn: ModelFn,
    shape,
    steps=None,
    generators=None,
    device="cpu",
    **kwargs,
):
    """Dispatch by name ('ddpm' | 'ddim' | 'dpmpp' | 'lcm'); `steps` None means
    DEFAULT_STEPS[sampler]."""
    if sampler not in SAMPLERS:
        raise UserError(f"sampler={sampler!r} is not known; use one of {', '.join(SAMPLERS)}.")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    return SAMPLERS[sampler](
        diffusion, model_fn, shape, steps=steps, generators=generators, device=device, **kwargs
    )


# ------------------------------------------------- classifier-free guidance
def cfg_model_fn(model, y: torch.Tensor, null_label: int, w: float | torch.Tensor) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): pred = pred_u + w (pred_c - pred_u).

    model(x_t, t, y) -> (B, C or 2C, H, W). One batched forward over [x; x] with
    [y; null]; ALL C prediction channels are guided (DiT issue 41 guided 3 of 4), the
    variance channels come from the conditional half. w = 1 is the conditional model
    alone and skips the unconditional half. Guiding eps, v or x0 is the same thing:
    at a fixed x_t each is an affine function of the others. w may be a (B,) tensor, one
    weight per image (consistency distillation's teacher draws w per image).
    """
    per_image = isinstance(w, torch.Tensor)
    w = w.view(-1, 1, 1, 1) if per_image else float(w)

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        yy = y.to(x_t.device)
        if not per_image and w == 1.0:
            return model(x_t, t, yy)
        C = x_t.shape[1]
        null = torch.full_like(yy, null_label)
        out = model(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([yy, null])
        )  # (2B, C|2C, H, W)
        cond, uncond = out.chunk(2)
        ww = w.to(out.device, out.dtype) if per_image else w
        guided = uncond[:, :C] + ww * (cond[:, :C] - uncond[:, :C])
        return torch.cat([guided, cond[:, C:]], dim=1)

    return fn
