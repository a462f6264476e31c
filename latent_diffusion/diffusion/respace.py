"""Sampling with fewer steps than training (Improved DDPM sec. 4, guided-diffusion respace.py).

A subsequence S of the training steps defines a new Markov chain with the same
marginals: alphas_cumprod at the kept steps are unchanged and the new betas are
beta_i = 1 - acp_{S_i} / acp_{S_{i-1}}. A learned variance v is then read
against the NEW beta_i and beta_tilde_i, which is what keeps it consistent with
the larger steps. The new process keeps `timestep_map`, so the denoiser is still
called with the original timesteps.
"""

from __future__ import annotations

import numpy as np

from latent_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from latent_diffusion.utils.errors import UserError


def space_timesteps(T: int, section_counts) -> set[int]:
    """Which of T steps to keep, as guided-diffusion.

    section_counts: "ddimN" (stride such that exactly N steps remain, starting at 0),
    "N" or "N1,N2,..." or an int or a list of ints (split [0, T) into equal sections
    and take N_i evenly spaced steps from section i, both ends included).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, T):
                if len(range(0, T, stride)) == desired:
                    return set(range(0, T, stride))
            raise UserError(
                f"steps={section_counts!r}: no integer stride gives exactly {desired} of {T} "
                f"steps; "
                f"use a plain count such as steps={desired}."
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(T, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise UserError(f"steps: cannot take {count} steps from a section of {size} (T={T}).")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(stride * j) for j in range(count)]
        start += size
    return set(kept)


def respaced(diffusion: GaussianDiffusion, use_timesteps) -> GaussianDiffusion:
    """A GaussianDiffusion over the kept indices (of `diffusion`'s own schedule)."""
    keep = np.array(sorted(set(int(i) for i in use_timesteps)), dtype=np.int64)
    if len(keep) == 0 or keep[0] < 0 or keep[-1] >= diffusion.num_timesteps:
        raise UserError(f"respacing: kept steps must lie in [0, {diffusion.num_timesteps}).")
    acp = diffusion.schedule.alphas_cumprod[keep]
    acp_prev = np.append(1.0, acp[:-1])
    betas = 1.0 - acp / acp_prev
    return GaussianDiffusion(
        betas,
        prediction=diffusion.prediction,
        learn_sigma=diffusion.learn_sigma,
        loss=diffusion.loss,
        lambda_vlb=diffusion.lambda_vlb,
        rescale_timesteps=diffusion.rescale_timesteps,
        clip_x0=diffusion.clip_x0,
        fixed_variance=diffusion.fixed_variance,
        snr_gamma=diffusion.snr_gamma,
        timestep_map=diffusion.schedule.timestep_map[keep],
        original_num_steps=diffusion.original_num_steps,
    )


def respaced_for(diffusion: GaussianDiffusion, steps) -> GaussianDiffusion:
    """`steps` None -> the process itself; else respaced(space_timesteps(T, steps))."""
    if steps is None or (isinstance(steps, int) and steps == diffusion.num_timesteps):
        return diffusion
    return respaced(diffusion, space_timesteps(diffusion.num_timesteps, steps))
