"""The forward process, the hybrid loss and respacing against closed forms and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from latent_diffusion.diffusion import (
    GaussianDiffusion,
    betas_for,
    create_diffusion,
    respaced,
    space_timesteps,
)
from latent_diffusion.diffusion.losses import gaussian_nll, normal_kl
from latent_diffusion.utils.errors import UserError

DIFFUSERS_SCHEDULE = {
    "linear": {"beta_schedule": "linear"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    # Stable Diffusion's scheduler config: the latent-diffusion schedule
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


@pytest.mark.parametrize("schedule", ["linear", "cosine", "scaled_linear"])
def test_alphas_cumprod_and_q_sample_match_diffusers(schedule):
    d = GaussianDiffusion(betas_for(schedule, 1000))
    sch = DDPMScheduler(num_train_timesteps=1000, **DIFFUSERS_SCHEDULE[schedule])
    np.testing.assert_allclose(
        d.schedule.alphas_cumprod, sch.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-7
    )
    x0, noise = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    torch.testing.assert_close(
        d.q_sample(x0, t, noise), sch.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5
    )


def test_linear_schedule_is_scaled_by_1000_over_T():
    b = betas_for("linear", 250)
    assert b[0] == pytest.approx(4e-4) and b[-1] == pytest.approx(0.08)
    cos = betas_for("cosine", 1000)
    assert cos.max() == pytest.approx(0.999) and cos[0] < 1e-4
    with pytest.raises(UserError, match="diffusion.schedule='quadratic'"):
        betas_for("quadratic")
    with pytest.raises(UserError, match="timesteps=10"):
        betas_for("linear", 10)  # beta_T = 0.2 * 10 > 1


def test_posterior_matches_gaussian_conditioning_and_diffusers():
    d = GaussianDiffusion(betas_for("linear", 1000), learn_sigma=True)
    s = d.schedule
    x0, x_t = (
        torch.randn(5, 4, 2, 2, dtype=torch.float64),
        torch.randn(5, 4, 2, 2, dtype=torch.float64),
    )
    t = torch.tensor([1, 2, 50, 400, 999])
    mean, var, _ = d.q_posterior_mean_variance(x0, x_t, t)
    # Independent derivation: x_{t-1}|x0 ~ N(sqrt(acp_prev) x0, 1-acp_prev), x_t = sqrt(alpha)
    # x_{t-1} + sqrt(beta) e;
    # condition the joint Gaussian of (x_{t-1}, x_t) given x0 on x_t.
    for k, tk in enumerate(t.tolist()):
        acp, acp_prev, alpha = s.alphas_cumprod[tk], s.alphas_cumprod_prev[tk], 1 - s.betas[tk]
        cov = math.sqrt(alpha) * (1 - acp_prev)
        m = math.sqrt(acp_prev) * x0[k] + cov / (1 - acp) * (x_t[k] - math.sqrt(acp) * x0[k])
        v = (1 - acp_prev) - cov**2 / (1 - acp)
        torch.testing.assert_close(mean[k], m)
        assert var[k].item() == pytest.approx(v, rel=1e-10)
    # diffusers' DDPM step with an x0 prediction: prev = posterior mean + sqrt(beta_tilde) z.
    sch = DDPMScheduler(
        num_train_timesteps=1000,
        prediction_type="sample",
        clip_sample=False,
        variance_type="fixed_small",
    )
    for tk in [1, 50, 999]:
        x0f, xtf = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
        prev = sch.step(x0f, tk, xtf, generator=torch.Generator().manual_seed(3)).prev_sample
        z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
        tt = torch.full((2,), tk)
        m, v, _ = d.q_posterior_mean_variance(x0f, xtf, tt)
        # diffusers works in float32: 1 - acp cancels at small t, hence the loose tolerance
        torch.testing.assert_close(prev, m + v.sqrt() * z, rtol=1e-3, atol=1e-3)


def test_learned_range_endpoints_and_diffusers_learned_range():
    d = GaussianDiffusion(betas_for("linear", 1000), learn_sigma=True)
    s = d.schedule
    x = torch.zeros(3, 4, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 700])
    for v, want in [(1.0, s.log_betas), (-1.0, s.posterior_log_variance_clipped)]:
        out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1)
        lv = d.p_mean_variance(out, x, t)["log_variance"]
        np.testing.assert_allclose(lv[:, 0, 0, 0].numpy(), want[t.numpy()], rtol=1e-12)
    # v = 0 is the geometric mean of beta and beta_tilde; diffusers' learned_range agrees (t > 0).
    sch = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    for tk, v in [(10, 0.0), (700, 0.3)]:
        out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1)
        lv = d.p_mean_variance(out, x, torch.full((3,), tk))["log_variance"][0, 0, 0, 0].item()
        want = sch._get_variance(tk, predicted_variance=torch.tensor(v)).item()
        assert lv == pytest.approx(want, abs=1e-3)  # diffusers' beta_tilde is float32


def test_gaussian_divergences():
    m, lv = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-15  # KL of identical Gaussians is 0
    kl = normal_kl(
        torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(4.0))
    )
    assert kl.item() == pytest.approx(math.log(2) + (1 + 1) / 8 - 0.5)  # closed form, sigma 1 vs 2
    nll = gaussian_nll(torch.tensor(0.5), torch.tensor(0.0), torch.tensor(math.log(0.25)))
    ref = -torch.distributions.Normal(0.0, 0.5).log_prob(torch.tensor(0.5))
    assert nll.item() == pytest.approx(ref.item())


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_parametrisation_round_trips(prediction):
    d = GaussianDiffusion(
        betas_for("cosine", 1000), prediction=prediction, learn_sigma=False, loss="mse"
    )
    x0, eps = (
        torch.randn(4, 4, 3, 3, dtype=torch.float64),
        torch.randn(4, 4, 3, 3, dtype=torch.float64),
    )
    t = torch.tensor([0, 3, 500, 999])
    x_t = d.q_sample(x0, t, eps)
    v = d.v_from(x0, eps, t)
    torch.testing.assert_close(d.x0_from_v(x_t, t, v), x0)
    torch.testing.assert_close(d.eps_from_v(x_t, t, v), eps)
    torch.testing.assert_close(d.x0_from_eps(x_t, t, eps)[:3], x0[:3])  # t=999: acp tiny, ill-posed
    torch.testing.assert_close(d.eps_from_x0(x_t, t, x0), eps)
    # the model's target, fed back as its prediction, recovers x0 and eps exactly
    px0, peps = d.predict_x0_eps(d.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(peps, eps)
    torch.testing.assert_close(px0[:3], x0[:3])


def test_vb_trains_only_the_variance():
    d = GaussianDiffusion(betas_for("linear", 1000), learn_sigma=True, loss="hybrid")
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    t = torch.arange(4) * 200 + 1
    var_param = torch.full((4, 4, 4, 4), 0.3, requires_grad=True)
    pred = (torch.randn(4, 4, 4, 4) * 0.5).requires_grad_(True)
    losses = d.training_losses(lambda x_t, tt: torch.cat([pred, var_param], 1), x0, t, noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (4,) for v in losses.values())
    g_pred, g_var = torch.autograd.grad(losses["vb"].sum(), [pred, var_param], allow_unused=True)
    assert g_pred is None or g_pred.abs().max() == 0  # stop-gradient on the mean
    assert g_var.abs().min() > 0  # the variance channels receive the whole vb gradient
    # and the total loss = mse + lambda * T * vb (guided-diffusion's mse + vb for T = 1000)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def test_vb_is_zero_when_model_matches_posterior_and_t0_is_continuous_nll():
    d = GaussianDiffusion(betas_for("linear", 1000), learn_sigma=True)
    x0, noise = (
        torch.randn(3, 4, 4, 4, dtype=torch.float64),
        torch.randn(3, 4, 4, 4, dtype=torch.float64),
    )
    # exact eps and v = -1 (variance beta_tilde): p equals q(x_{t-1}|x_t,x0), KL = 0
    t = torch.tensor([5, 300, 999])
    out = torch.cat([noise, -torch.ones_like(x0)], 1)
    vb = d.vb_terms_bpd(out, x0, d.q_sample(x0, t, noise), t)
    assert vb.abs().max() < 1e-9
    # t = 0: Gaussian NLL of x0 under N(mean, beta_tilde_1-ish variance), in bits per dim
    t0 = torch.zeros(3, dtype=torch.long)
    x_t = d.q_sample(x0, t0, noise)
    p = d.p_mean_variance(out, x_t, t0)
    ref = -torch.distributions.Normal(p["mean"], p["variance"].sqrt()).log_prob(x0).mean(
        (1, 2, 3)
    ) / math.log(2)
    torch.testing.assert_close(d.vb_terms_bpd(out, x0, x_t, t0), ref)
    assert torch.isfinite(ref).all()


def test_mse_targets_and_loss_choices():
    for prediction in ["eps", "v", "x0"]:
        d = GaussianDiffusion(
            betas_for("linear", 100), prediction=prediction, learn_sigma=False, loss="mse"
        )
        x0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
        t = torch.tensor([3, 60])
        target = d.target(x0, noise, t)
        exact = d.training_losses(lambda x_t, tt, target=target: target, x0, t, noise)
        assert exact["mse"].abs().max() < 1e-12 and exact["vb"].abs().max() == 0
        zero = d.training_losses(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise)
        torch.testing.assert_close(zero["loss"], (target**2).mean((1, 2, 3)))
    with pytest.raises(UserError, match="learn_sigma=true"):
        GaussianDiffusion(betas_for("linear", 100), learn_sigma=False, loss="hybrid")
    with pytest.raises(UserError, match="out_channels"):
        d = GaussianDiffusion(betas_for("linear", 100), learn_sigma=True)
        d.training_losses(lambda x_t, tt: x_t, torch.randn(1, 4, 2, 2), torch.tensor([1]))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weight_is_min_snr_gamma_times_the_x0_error(prediction):
    """Min-SNR-gamma (Hang et al. 2023): whatever the target, the weighted L_simple of a
    prediction that is off by delta in x0 equals min(SNR_t, gamma) * mean(delta^2)."""
    gamma = 5.0
    d = GaussianDiffusion(
        betas_for("linear", 1000),
        prediction=prediction,
        learn_sigma=False,
        loss="mse",
        snr_gamma=gamma,
    )
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 4, 4, generator=g), torch.randn(6, 4, 4, 4, generator=g)
    delta = 0.1 * torch.randn(6, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 200, 600, 999])  # SNR from ~1e4 down to ~4e-5: both sides of gamma
    x0, noise = x0.double(), noise.double()
    x_t = d.q_sample(x0, t, noise)
    x0_hat = x0 + delta
    eps_hat = d.eps_from_x0(x_t, t, x0_hat)
    pred = {"eps": eps_hat, "x0": x0_hat, "v": d.v_from(x0_hat, eps_hat, t)}[prediction]
    out = d.training_losses(lambda xt, tt: pred, x0, t, noise)
    acp = torch.as_tensor(d.schedule.alphas_cumprod)[t]
    snr = acp / (1 - acp)
    expected = snr.clamp(max=gamma) * (delta**2).mean((1, 2, 3))
    torch.testing.assert_close(
        out["loss"], expected, rtol=1e-4, atol=1e-9
    )  # the loss casts to float32
    # the reported mse stays the plain, unweighted one
    plain = GaussianDiffusion(
        betas_for("linear", 1000), prediction=prediction, learn_sigma=False, loss="mse"
    )
    torch.testing.assert_close(
        out["mse"], plain.training_losses(lambda xt, tt: pred, x0, t, noise)["loss"]
    )
    with pytest.raises(UserError, match="snr_gamma"):
        GaussianDiffusion(betas_for("linear", 100), learn_sigma=False, loss="mse", snr_gamma=0)


def test_space_timesteps_as_guided_diffusion():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "250") == space_timesteps(1000, 250)
    assert len(space_timesteps(1000, 250)) == 250 and {0, 999} <= space_timesteps(1000, 250)
    # guided-diffusion's docstring example
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, "10,15,20")
    assert len(space_timesteps(300, [10, 15, 20])) == 45
    assert space_timesteps(10, [3]) == {0, 4, 9}  # round(4.5) = 4 (banker's rounding, as Python)
    with pytest.raises(UserError, match="ddim11"):
        space_timesteps(100, "ddim11")  # strides 9 and 10 give 12 and 10 steps


def test_respaced_betas_reproduce_kept_alphas_cumprod_and_map_timesteps():
    d = GaussianDiffusion(betas_for("cosine", 1000), learn_sigma=True)
    keep = sorted(space_timesteps(1000, 25))
    r = respaced(d, keep)
    np.testing.assert_allclose(
        r.schedule.alphas_cumprod, d.schedule.alphas_cumprod[keep], rtol=1e-9
    )
    assert r.schedule.timestep_map.tolist() == keep
    seen = []
    model = lambda x_t, t: (seen.append(t.clone()), torch.zeros(len(t), 8, 2, 2))[1]  # noqa: E731
    r.training_losses(model, torch.randn(2, 4, 2, 2), torch.tensor([0, 24]))
    assert seen[0].tolist() == [keep[0], keep[24]]
    # a respaced process of a respaced process composes the maps
    rr = respaced(r, [0, 12, 24])
    assert rr.schedule.timestep_map.tolist() == [keep[0], keep[12], keep[24]]
    np.testing.assert_allclose(
        rr.schedule.alphas_cumprod, d.schedule.alphas_cumprod[[keep[0], keep[12], keep[24]]]
    )


def test_create_diffusion_from_hydra_config():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "diffusion" / "default.yaml")
    d = instantiate(cfg)
    assert isinstance(d, GaussianDiffusion) and d.num_timesteps == 1000
    assert d.learn_sigma and d.loss == "hybrid" and not d.clip_x0
    # the measured defaults (docs/evaluation.md): v-prediction, LDM's schedule, Min-SNR-5
    assert d.prediction == "v" and d.snr_gamma == 5.0
    np.testing.assert_allclose(d.schedule.betas, betas_for("scaled_linear", 1000))
    assert create_diffusion(schedule="cosine", timesteps=50).num_timesteps == 50
    t = d.sample_timesteps(10000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and abs(t.float().mean().item() - 499.5) < 10


def test_importance_sampling_is_uniform_until_warm_then_unbiased():
    from latent_diffusion.diffusion import LossSecondMomentResampler

    d = create_diffusion(schedule="cosine", timesteps=10, timestep_sampler="loss-second-moment")
    rs = d.timestep_sampler
    assert isinstance(rs, LossSecondMomentResampler)
    t, w = rs.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(64))  # no history yet: uniform
    L = torch.arange(1.0, 11.0)  # loss at step t is t + 1
    for _ in range(10):
        rs.update(torch.arange(10), L)
    p = rs.weights() / rs.weights().sum()
    np.testing.assert_allclose(p, 0.999 * L.numpy() / L.sum().item() + 0.001 / 10)
    t, w = rs.sample(200_000, torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=10).double() / len(t)
    np.testing.assert_allclose(freq.numpy(), p, atol=3e-3)
    # importance weights keep the loss estimate unbiased: E[w L_t] = mean_t L_t
    assert (w * L[t]).mean().item() == pytest.approx(L.mean().item(), rel=0.01)
    fresh = LossSecondMomentResampler(10)
    fresh.load_state_dict(rs.state_dict())
    np.testing.assert_array_equal(fresh.weights(), rs.weights())
    with pytest.raises(UserError, match="timestep_sampler='lossaware'"):
        create_diffusion(timestep_sampler="lossaware")


def test_vb_is_the_kl_between_true_and_model_posteriors_in_bits():
    d = GaussianDiffusion(betas_for("cosine", 1000), prediction="v", learn_sigma=True)
    torch.manual_seed(1)
    x0, noise = (
        torch.randn(3, 4, 4, 4, dtype=torch.float64),
        torch.randn(3, 4, 4, 4, dtype=torch.float64),
    )
    t = torch.tensor([1, 250, 998])
    x_t = d.q_sample(x0, t, noise)
    out = torch.cat(
        [torch.randn_like(x0), torch.rand_like(x0) * 2 - 1], 1
    )  # any prediction, v in [-1, 1]
    q_mean, q_var, _ = d.q_posterior_mean_variance(x0, x_t, t)
    p = d.p_mean_variance(out, x_t, t)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q_mean, q_var.sqrt().expand_as(q_mean)),
        torch.distributions.Normal(p["mean"], p["variance"].sqrt()),
    )
    torch.testing.assert_close(d.vb_terms_bpd(out, x0, x_t, t), kl.mean((1, 2, 3)) / math.log(2))


def test_rescaled_timesteps_reach_the_model_as_in_guided_diffusion():
    d = GaussianDiffusion(betas_for("linear", 500), rescale_timesteps=True)
    r = respaced(d, [0, 10, 499])
    torch.testing.assert_close(
        r.model_timesteps(torch.tensor([0, 1, 2])), torch.tensor([0.0, 20.0, 998.0])
    )
    plain = respaced(GaussianDiffusion(betas_for("linear", 500)), [0, 10, 499])
    assert plain.model_timesteps(torch.tensor([1, 2])).tolist() == [10, 499]
