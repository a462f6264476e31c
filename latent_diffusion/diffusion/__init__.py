"""Noise schedules, the hybrid training objective, samplers, classifier-free and classifier
guidance."""

from __future__ import annotations

from latent_diffusion.diffusion.classifier_guidance import (
    check_scale,
    classifier_cond_fn,
    condition_mean,
    condition_score,
)
from latent_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from latent_diffusion.diffusion.respace import respaced, respaced_for, space_timesteps
from latent_diffusion.diffusion.samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    cfg_model_fn,
    ddim_sample,
    ddpm_sample,
    dpmpp_sample,
    draw_noise,
    generators_from_seeds,
    sample,
)
from latent_diffusion.diffusion.schedule import DiffusionSchedule, betas_for, extract
from latent_diffusion.diffusion.timestep_sampler import (
    LossSecondMomentResampler,
    UniformSampler,
    create_timestep_sampler,
)


def create_diffusion(
    schedule: str = "linear",
    timesteps: int = 1000,
    prediction: str = "eps",
    learn_sigma: bool = True,
    loss: str = "hybrid",
    lambda_vlb: float = 0.001,
    rescale_timesteps: bool = False,
    clip_x0: bool = False,
    timestep_sampler: str = "uniform",
    snr_gamma: float | None = None,
) -> GaussianDiffusion:
    """The Hydra `_target_` of conf/diffusion/*.yaml: the training process of T steps.

    The result carries `.timestep_sampler` (uniform | loss-second-moment): training draws
    `t, w = diffusion.timestep_sampler.sample(B, generator, device)`, weights the per-sample
    loss by w and feeds the losses back with `.update(t, loss)`.
    """
    diffusion = GaussianDiffusion(
        betas_for(schedule, int(timesteps)),
        prediction=prediction,
        learn_sigma=learn_sigma,
        loss=loss,
        lambda_vlb=lambda_vlb,
        rescale_timesteps=rescale_timesteps,
        clip_x0=clip_x0,
        snr_gamma=snr_gamma,
    )
    diffusion.timestep_sampler = create_timestep_sampler(timestep_sampler, diffusion.num_timesteps)
    return diffusion


__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "DiffusionSchedule",
    "GaussianDiffusion",
    "LossSecondMomentResampler",
    "UniformSampler",
    "betas_for",
    "cfg_model_fn",
    "check_scale",
    "classifier_cond_fn",
    "condition_mean",
    "condition_score",
    "create_diffusion",
    "create_timestep_sampler",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_sample",
    "draw_noise",
    "extract",
    "generators_from_seeds",
    "respaced",
    "respaced_for",
    "sample",
    "space_timesteps",
]
