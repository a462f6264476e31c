"""Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", Alg. 1 and 3).

A student f(x_t, t, y, w) learns to map any point of the guided teacher's probability-flow
ODE straight to its end x0, for a continuous range of guidance weights w (the w-conditioning
of Meng et al. 2023, "On Distillation of Guided Diffusion Models"). Sampling then needs K
student forwards (K = 1..N) and no second, unconditional forward.

Why consistency distillation and not progressive halving (Salimans & Ho 2022; Meng et al.'s
second stage): one training run serves every K, where progressive distillation trains
log2(teacher steps / K) students one after another, each from the last; and the skipping-step
teacher solve of LCM needs one teacher call per training step, so the whole distillation fits
a CPU budget (docs/sampling.md has the measured cost).

The pieces, all in the latent space the teacher was trained in:

- the skipping-step grid t_n = (n + 1) k - 1, n = 0..N-1, k = T // N (LCM's N = 50, k = 20);
- the teacher's guided one-step solve from t_n to t_n - k: a DDIM step (eta = 0) on the
  prediction guided by samplers.cfg_model_fn with one w per image (1 = conditional model);
- the consistency parametrisation f = c_skip(t) x_t + c_out(t) x0_pred(x_t, t), with
  LCM's c_skip = s^2 / ((10 t)^2 + s^2), c_out = 10 t / sqrt((10 t)^2 + s^2), s = 0.5:
  f(x, 0) = x exactly (the boundary condition), f ~ x0_pred at every grid point;
- the loss d(f_student(x_{t_n}, t_n), f_target(x_hat_{t_n - k}, t_n - k)), pseudo-Huber as
  LCM's released training script, with the target an EMA of the student (mu = 0.95);
- the multistep sampler (Alg. 3, diffusers' LCMScheduler): x0 = f(x_t, t) at K grid points,
  re-noised to the next one with the image's own generator.

`student(x_t, t, y, w)` and `teacher(x_t, t, y)` return the raw denoiser output (the
prediction channels, then the variance channels when the model learns them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from latent_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from latent_diffusion.utils.errors import UserError

# LCM's constants: 50 grid points (k = 20 of 1000 training steps), sigma_data 0.5, and the
# timestep scaling 10 that makes c_skip ~ 0 at every grid point but t = 0.
GRID_POINTS = 50
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
HUBER_C = 1e-3

StudentFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ the grid
def skipping_grid(num_timesteps: int, grid_points: int = GRID_POINTS) -> np.ndarray:
    """[k-1, 2k-1, ..., N k - 1] (N = grid_points, k = T // N): the times the student is
    trained at and samples on, ascending."""
    if not isinstance(grid_points, int) or isinstance(grid_points, bool):
        raise UserError(f"grid_points={grid_points!r}: must be an integer")
    if not 1 <= grid_points <= num_timesteps:
        raise UserError(
            f"grid_points={grid_points}: must be in [1, {num_timesteps}] (the teacher's T)"
        )
    k = num_timesteps // grid_points
    return np.arange(1, grid_points + 1, dtype=np.int64) * k - 1


def inference_timesteps(grid: np.ndarray, steps: int) -> np.ndarray:
    """K of the grid's points, largest first, evenly spaced over the grid as diffusers'
    LCMScheduler.set_timesteps picks them (K = 4 of LCM's grid: 999, 759, 499, 259)."""
    n = len(grid)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise UserError(
            f"steps={steps!r}: a consistency student samples in 1 to {n} steps (the {n} points "
            f"of the grid it was distilled on); 4 is the usual choice"
        )
    idx = np.floor(np.linspace(0, n, num=steps, endpoint=False)).astype(np.int64)
    return grid[::-1][idx]


# ------------------------------------------------------------------ the parametrisation
def boundary_coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at times t (B,), float64, shaped (B, 1, 1, 1)."""
    s = (TIMESTEP_SCALING * t.to(torch.float64)).view(-1, 1, 1, 1)
    c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
    c_out = s / torch.sqrt(s**2 + SIGMA_DATA**2)
    return c_skip, c_out


def consistency_output(
    diffusion: GaussianDiffusion, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """f(x_t, t) = c_skip x_t + c_out x0(out): the student's estimate of the ODE's end, in
    x_t's dtype. Only the prediction channels of `out` count (not a learned variance)."""
    pred, _ = diffusion.split_output(out.to(x_t.dtype), x_t)
    x0, _ = diffusion.predict_x0_eps(pred, x_t, t)
    c_skip, c_out = boundary_coefficients(t)
    return c_skip.to(x_t.dtype) * x_t + c_out.to(x_t.dtype) * x0


def teacher_ddim_step(
    diffusion: GaussianDiffusion,
    teacher: Callable,
    x_t: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    null_class: int,
) -> torch.Tensor:
    """The guided teacher's DDIM step (eta = 0) from t to t_prev (B,) for images of class y
    (B,) at guidance w (B,): one batched forward of [x; x] with [y; null] (cfg_model_fn)."""
    from latent_diffusion.diffusion.samplers import cfg_model_fn

    out = diffusion.call_model(cfg_model_fn(teacher, y, null_class, w), x_t, t)  # (B, C|2C, ..)
    pred, _ = diffusion.split_output(out, x_t)
    x0, eps = diffusion.predict_x0_eps(pred, x_t, t)
    acp_prev = diffusion.schedule.at("alphas_cumprod", t_prev, x_t)
    return acp_prev.sqrt() * x0 + (1 - acp_prev).sqrt() * eps


# ------------------------------------------------------------------ the loss
def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = HUBER_C) -> torch.Tensor:
    """sqrt((a - b)^2 + c^2) - c per element, averaged per image -> (B,)."""
    d = (a.float() - b.float()) ** 2
    return (torch.sqrt(d + c * c) - c).flatten(1).mean(1)


def consistency_distillation_loss(
    diffusion: GaussianDiffusion,
    student: Callable,
    target: Callable,
    teacher: Callable,
    z0: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    grid: np.ndarray,
    null_class: int,
    generator: torch.Generator | None = None,
    loss: str = "huber",
) -> dict:
    """One step of latent consistency distillation on clean latents z0 (B, C, H, W) of
    classes y (B,) at guidance weights w (B,) -> {"loss": (B,), "t": (B,)}.

    student(x, t, y, w) with gradients; target(x, t, y, w) and teacher(x, t, y) are
    evaluated without. Draws (the grid index and the noise) come from `generator`."""
    B = z0.shape[0]
    k = int(grid[0]) + 1
    n = torch.randint(0, len(grid), (B,), generator=generator, device="cpu")
    t = torch.as_tensor(grid, device="cpu")[n].to(z0.device)  # (B,) grid points
    t_prev = (t - k).clamp(min=0)  # the smallest point steps to t = 0, where f(x, 0) = x
    noise = torch.randn(z0.shape, generator=generator, device="cpu").to(z0.device, z0.dtype)
    x_t = diffusion.q_sample(z0, t, noise)
    with torch.no_grad():
        x_prev = teacher_ddim_step(diffusion, teacher, x_t, t, t_prev, y, w, null_class)
        f_target = consistency_output(
            diffusion, diffusion.call_model(lambda x, tt: target(x, tt, y, w), x_prev, t_prev),
            x_prev, t_prev,
        )  # fmt: skip
    f_student = consistency_output(
        diffusion, diffusion.call_model(lambda x, tt: student(x, tt, y, w), x_t, t), x_t, t
    )
    if loss == "huber":
        per_image = pseudo_huber(f_student, f_target)
    elif loss == "l2":
        per_image = ((f_student.float() - f_target.float()) ** 2).flatten(1).mean(1)
    else:
        raise UserError(f"loss={loss!r}: use huber (LCM's pseudo-Huber) or l2")
    return {"loss": per_image, "t": t}


# ------------------------------------------------------------------ the sampler
@torch.no_grad()
def lcm_sample(
    diffusion: GaussianDiffusion,
    model_fn: StudentFn,
    shape,
    steps: int = 4,
    generators=None,
    device="cpu",
    progress=None,
    cond_fn=None,
    grid_points: int = GRID_POINTS,
):
    """LCM's multistep sampler (Luo et al. 2023, Alg. 3): x = noise; at each of the K
    inference timesteps x0 = f(x, t), then x = q_sample(x0, next t) with fresh noise from the
    image's own generator; the last x0 is the sample. model_fn(x_t, t) is the student at the
    image's class and w; the sampler state is float64 as in the other samplers."""
    from latent_diffusion.diffusion.samplers import _state_dtype, draw_noise

    if cond_fn is not None:
        raise UserError(
            "classifier guidance is not available with a consistency student (its steps are "
            "not small enough for a gradient nudge); sample the teacher for it, or pass "
            "classifier_scale=0"
        )
    ts = inference_timesteps(skipping_grid(diffusion.num_timesteps, grid_points), steps)
    x = draw_noise(shape, generators, device, _state_dtype(device))  # (B, C, H, W)
    x0 = x
    for j, step in enumerate(ts):
        t = torch.full((shape[0],), int(step), dtype=torch.long, device=x.device)
        out = diffusion.call_model(model_fn, x.float(), t).to(x.dtype)
        x0 = consistency_output(diffusion, out, x, t)
        if progress:
            progress(j + 1, len(ts))
        if j + 1 < len(ts):
            t_next = torch.full_like(t, int(ts[j + 1]))
            x = diffusion.q_sample(x0, t_next, draw_noise(shape, generators, device, x.dtype))
    return x0.float()


def check_guidance_range(w: float, w_range: Sequence[float]) -> float:
    """The student knows w only inside the range it was distilled on."""
    lo, hi = float(w_range[0]), float(w_range[1])
    w = float(w)
    if not lo <= w <= hi:
        raise UserError(
            f"guidance={w:g}: this student was distilled for guidance in [{lo:g}, {hi:g}] and "
            f"has never seen w={w:g}; pick one in that range, or distil again with "
            f"guidance_range=[lo,hi] covering it"
        )
    return w


__all__ = [
    "GRID_POINTS",
    "boundary_coefficients",
    "check_guidance_range",
    "consistency_distillation_loss",
    "consistency_output",
    "inference_timesteps",
    "lcm_sample",
    "pseudo_huber",
    "skipping_grid",
    "teacher_ddim_step",
]
