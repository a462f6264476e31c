"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4).

A classifier p_phi(y | x_t) trained on noisy inputs steers sampling towards class y:
the guided score is grad log p(x_t) + s grad log p_phi(y | x_t), i.e. sampling from
p(x) p(y | x)^s (s = 1: the class-conditional distribution itself).

`cond_fn(x_t (B,C,H,W) float32, t (B,) model timesteps) -> s * grad_x log p_phi(y | x_t)`
is the hook every sampler takes. It is applied in one of two ways (guided-diffusion's
gaussian_diffusion.py):
  - condition_mean (ancestral DDPM, Alg. 1 of the paper): the mean of p(x_{t-1} | x_t)
    moves by Sigma_t * grad, the Gaussian-step form of the tilted transition;
  - condition_score (DDIM, DPM-Solver++; Alg. 2): eps is a scaled score,
    eps = -sqrt(1 - acp_t) grad log p(x_t), so the guided eps is
    eps - sqrt(1 - acp_t) * grad and x0 follows from it.
Both leave the denoiser untouched: the samplers evaluate it under no_grad and only
the classifier's forward runs with autograd, for the gradient with respect to x_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from latent_diffusion.utils.errors import UserError

CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_scale(scale, key: str = "classifier_scale") -> float:
    """A guidance scale must be a finite number >= 0 (0 = no classifier guidance)."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise UserError(
            f"{key}={scale!r}: must be a number >= 0 (0 = no classifier guidance)"
        ) from None
    if not math.isfinite(s) or s < 0:
        raise UserError(
            f"{key}={scale!r}: must be a finite number >= 0 (0 = no classifier guidance, "
            "1 = the class-conditional distribution, > 1 sharper classes)"
        )
    return s


def classifier_cond_fn(classifier, y: torch.Tensor, scale: float) -> CondFn:
    """The cond_fn of a classifier `classifier(x_t, t) -> logits (B, K)` for labels y (B,).

    Returns s * grad_x log softmax(logits)[y] (B, C, H, W) in x_t's dtype. The gradient is
    taken with respect to a detached copy of x_t alone (torch.autograd.grad), so nothing
    accumulates in the classifier's .grad and no graph reaches the denoiser. Each image's
    gradient depends on that image only (the log-probs are summed over independent rows),
    which keeps samples independent of the batch they are drawn in.
    """
    scale = check_scale(scale)

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x_t.detach().float().requires_grad_(True)  # (B, C, H, W)
            logits = classifier(x_in, t)  # (B, K)
            log_p = F.log_softmax(logits.float(), dim=-1)
            chosen = log_p[
                torch.arange(len(log_p), device=log_p.device), y.to(log_p.device)
            ]  # (B,)
            (grad,) = torch.autograd.grad(chosen.sum(), x_in)
        return (grad * scale).to(x_t.dtype)

    return cond_fn


def condition_mean(p: dict, grad: torch.Tensor) -> torch.Tensor:
    """Ancestral step: mu + Sigma_t * s grad log p(y | x_t) (guided-diffusion's condition_mean)."""
    return p["mean"] + p["variance"] * grad.to(p["mean"].dtype)


def condition_score(
    diffusion,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score form: eps' = eps - sqrt(1 - acp_t) s grad log p(y | x_t); -> (x0', eps').

    x0 = (x_t - b eps) / a (a = sqrt(acp_t), b = sqrt(1 - acp_t)), so x0' = x0 + (b^2 / a) grad.
    Written as shifts of the given x0 and eps rather than recomputed from eps', so that a
    zero gradient (scale 0) returns the unguided predictions bit for bit, whatever the
    parametrisation (eps, v or x0). t indexes `diffusion`'s own (maybe respaced) schedule.
    """
    s = diffusion.schedule
    a, b = s.at("sqrt_alphas_cumprod", t, x_t), s.at("sqrt_one_minus_alphas_cumprod", t, x_t)
    grad = grad.to(eps.dtype)
    return x0 + (b * b / a) * grad, eps - b * grad
