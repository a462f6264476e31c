"""Samplers on a problem with an EXACT denoiser, against diffusers, and guidance / determinism.

Toy data: x0 ~ N(mu_y, S^2) independently per latent element. With x_t = a x0 + b eps
(a = sqrt(acp_t), b = sqrt(1 - acp_t)), x_t ~ N(a mu, a^2 S^2 + b^2) and the
Bayes-optimal denoiser is the Gaussian conditional expectation
    E[eps | x_t] = b (x_t - a mu) / (a^2 S^2 + b^2),
    E[x0  | x_t] = mu + a S^2 (x_t - a mu) / (a^2 S^2 + b^2),
and the true reverse variance is Var(x_{t-1} | x_t) = beta_tilde_t + coef1_t^2 Var(x0 | x_t),
Var(x0 | x_t) = S^2 b^2 / (a^2 S^2 + b^2), which the toy reports as the learned-range v.
A correct sampler must then give back mean mu and std S.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from latent_diffusion.diffusion import (
    cfg_model_fn,
    create_diffusion,
    draw_noise,
    generators_from_seeds,
    sample,
)
from latent_diffusion.utils.errors import UserError

MU, S = 0.7, 0.5
SHAPE = (500, 4, 4, 4)  # 32k latent elements: sampling error of the mean ~0.003


def toy_model(d, s=S, calls=None):
    """model(x_t, t, y) -> (B, C or 2C, H, W): the exact denoiser of N(MU + 0.3 y, s^2) data
    for the TRAINING schedule of `d` (t are original timesteps, as a trained net sees them)."""
    sch = d.schedule

    def coef(arr, t):
        return torch.as_tensor(arr, dtype=torch.float64)[t].view(-1, 1, 1, 1)

    def model(x, t, y=None):
        if calls is not None:
            calls.append(len(x))
        x = x.double()
        acp = coef(sch.alphas_cumprod, t)
        a, b = acp.sqrt(), (1 - acp).sqrt()
        mu = MU if y is None else MU + 0.3 * y.view(-1, 1, 1, 1).double()
        den = a * a * s * s + b * b
        eps = b * (x - a * mu) / den
        x0 = mu + a * s * s * (x - a * mu) / den
        pred = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[d.prediction]
        if not d.learn_sigma:
            return pred.float()
        var = (
            coef(sch.posterior_variance, t)
            + coef(sch.posterior_mean_coef1, t) ** 2 * s * s * b * b / den
        )
        lo, hi = coef(sch.posterior_log_variance_clipped, t), coef(sch.log_betas, t)
        v = (2 * (var.log() - lo) / (hi - lo) - 1).clamp(-1, 1).expand_as(x)
        return torch.cat([pred, v], 1).float()

    return model


# (sampler, steps, prediction, learn_sigma, std tolerance). Measured |std - S| with N = 500:
# DDPM-1000 0.001, DDPM-250 0.002, DDIM-50 0.028, DPM++-20 0.023. The deterministic
# samplers' shrinkage is discretisation, identical in diffusers (test below): DPM++'s
# last step returns E[x0 | x_50], whose std is S * sqrt(a^2 S^2 / (a^2 S^2 + b^2)) ~ 0.94 S.
CASES = [
    pytest.param("ddpm", None, "eps", True, 0.01, marks=pytest.mark.slow, id="ddpm1000"),
    pytest.param("ddpm", 250, "eps", True, 0.01, id="ddpm250"),
    pytest.param("ddpm", 250, "x0", False, 0.02, id="ddpm250-fixedvar-x0"),
    pytest.param("ddim", 50, "eps", True, 0.035, id="ddim50"),
    pytest.param("ddim", 50, "v", True, 0.035, id="ddim50-v"),
    pytest.param("dpmpp", 20, "eps", True, 0.03, id="dpmpp20"),
    pytest.param("dpmpp", 20, "v", False, 0.03, id="dpmpp20-v"),
]


@pytest.mark.parametrize("sampler,steps,prediction,learn_sigma,std_tol", CASES)
def test_sampler_reproduces_gaussian_data(sampler, steps, prediction, learn_sigma, std_tol):
    d = create_diffusion(
        prediction=prediction, learn_sigma=learn_sigma, loss="hybrid" if learn_sigma else "mse"
    )
    model = toy_model(d)
    x = sample(
        sampler,
        d,
        lambda x_t, t: model(x_t, t),
        SHAPE,
        steps=steps,
        generators=torch.Generator().manual_seed(0),
    )
    assert x.dtype == torch.float32 and x.shape == SHAPE
    assert abs(x.mean().item() - MU) < 0.015
    assert abs(x.std().item() - S) < std_tol


def _diffusers_loop(scheduler, model, steps, **step_kw):
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        out = model(x, torch.full((SHAPE[0],), int(t)))[:, :4]  # prediction channels only
        x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x


def test_dpmpp_and_ddim_match_diffusers_on_the_toy():
    d = create_diffusion()  # linear, eps, learned variance
    model = toy_model(d)
    fn = lambda x_t, t: model(x_t, t)  # noqa: E731
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for steps in (20, 7):
        ours = sample("dpmpp", d, fn, SHAPE, steps=steps, generators=g())
        ref = _diffusers_loop(
            DPMSolverMultistepScheduler(
                beta_schedule="linear",
                algorithm_type="dpmsolver++",
                solver_order=2,
                variance_type=None,
            ),
            model,
            steps,
        )
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # guided-diffusion's "ddim50" = diffusers' DDIM with leading spacing and final alpha 1
    ours = sample("ddim", d, fn, SHAPE, steps="ddim50", generators=g())
    ref = _diffusers_loop(
        DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True),
        model,
        50,
        eta=0.0,
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_respaced_ddpm_uses_the_learned_variance():
    d = create_diffusion()
    model = toy_model(d)

    def with_v(v):  # overwrite the variance channels with a constant v
        return lambda x_t, t: torch.cat([model(x_t, t)[:, :4], torch.full_like(x_t, v)], 1)

    stds = {}
    for name, fn in [
        ("learned", lambda x_t, t: model(x_t, t)),
        ("small", with_v(-1.0)),
        ("large", with_v(1.0)),
    ]:
        x = sample("ddpm", d, fn, SHAPE, steps=25, generators=torch.Generator().manual_seed(0))
        stds[name] = x.std().item()
    # 25 steps: beta_tilde (v=-1) and beta (v=+1) of the RESPACED chain bracket the truth
    assert stds["small"] < stds["learned"] < stds["large"]
    assert abs(stds["learned"] - S) < 0.015 < min(abs(stds["small"] - S), abs(stds["large"] - S))


def test_guidance_one_batched_call_all_channels_and_w1_is_conditional():
    d = create_diffusion()
    calls = []
    model = toy_model(d, calls=calls)
    x = torch.randn(3, 4, 4, 4)
    t = torch.tensor([10, 500, 900])
    y = torch.tensor([0, 1, 2])
    null = 3
    cond = model(x, t, y)
    calls.clear()
    torch.testing.assert_close(cfg_model_fn(model, y, null, 1.0)(x, t), cond, rtol=0, atol=0)
    assert calls == [3]  # w = 1: the unconditional half is skipped
    calls.clear()
    out = cfg_model_fn(model, y, null, 4.0)(x, t)
    assert calls == [6]  # one forward over [x; x]
    uncond = model(x, t, torch.full_like(y, null))
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])  # variance from the conditional branch
    assert (out[:, :4] - cond[:, :4]).abs().amin(dim=(0, 2, 3)).gt(0).all()  # every channel guided


def test_guided_sampling_moves_samples_away_from_the_null_class():
    d = create_diffusion()
    model = toy_model(d)
    y = torch.full((SHAPE[0],), 2)  # class mean MU + 0.6; "null" class 0 has mean MU
    for w, want in [(1.0, MU + 0.6), (2.0, MU + 1.2)]:
        x = sample(
            "dpmpp",
            d,
            cfg_model_fn(model, y, 0, w),
            SHAPE,
            steps=20,
            generators=torch.Generator().manual_seed(1),
        )
        # for Gaussians, eps guidance with weight w moves the mean to mu_u + w (mu_c - mu_u)
        assert abs(x.mean().item() - want) < 0.03


@pytest.mark.parametrize(
    "sampler,kw",
    [("ddpm", dict(steps=20)), ("ddim", dict(steps=10, eta=1.0)), ("dpmpp", dict(steps=8))],
)
def test_per_image_generators_make_images_independent_of_batching(sampler, kw):
    d = create_diffusion()
    model = toy_model(d)
    fn = lambda x_t, t: model(x_t, t)  # noqa: E731
    seeds = [11, 12, 13, 14, 15, 16]
    whole = sample(sampler, d, fn, (6, 4, 4, 4), generators=generators_from_seeds(seeds), **kw)
    first = sample(sampler, d, fn, (4, 4, 4, 4), generators=generators_from_seeds(seeds[:4]), **kw)
    rest = sample(sampler, d, fn, (2, 4, 4, 4), generators=generators_from_seeds(seeds[4:]), **kw)
    torch.testing.assert_close(whole, torch.cat([first, rest]), rtol=0, atol=0)
    assert not torch.equal(whole[0], whole[1])
    # image i's start noise is exactly its own generator's first draw
    z = draw_noise((2, 4, 4, 4), generators_from_seeds([5, 6]))
    torch.testing.assert_close(
        z[1].float(), torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(6))
    )


def test_sampler_errors_name_the_fix():
    d = create_diffusion()
    with pytest.raises(UserError, match="sampler='euler'"):
        sample("euler", d, lambda x, t: x, (1, 4, 2, 2))
    with pytest.raises(UserError, match="steps=0"):
        sample("dpmpp", d, lambda x, t: x, (1, 4, 2, 2), steps=0)
    with pytest.raises(UserError, match="must return 8"):
        sample("ddim", d, lambda x, t: x, (1, 4, 2, 2), steps=5)
