"""Classifier guidance on a problem where everything is known in closed form.

Toy data: a class y in {0, 1} with prior 1/2, then x0 | y ~ N(mu_y, S^2 I) over D = 4
latent elements, mu_0 = -M, mu_1 = +M. With x_t = a x0 + b eps (a = sqrt(acp_t),
b = sqrt(1 - acp_t)), x_t | y ~ N(a mu_y, v I), v = a^2 S^2 + b^2, so
  - the exact classifier is log p(y | x_t) = log softmax_y(-|x_t - a mu_y|^2 / 2v),
  - the exact unconditional denoiser is E[x0 | x_t] = sum_y p(y | x_t) (mu_y + a S^2 (x_t - a mu_y)
    / v).
At classifier scale 1 the guided score grad log p_t(x) + grad log p_t(y | x) is exactly
grad log p_t(x | y): the sampler must return N(mu_y, S^2), whose mean along the class
direction is M per element and of which a fraction Phi(M sqrt(D) / S) lies on class y's
side of the Bayes boundary. Unguided, the fraction is 1/2.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latent_diffusion.diffusion import (
    GaussianDiffusion,
    betas_for,
    cfg_model_fn,
    classifier_cond_fn,
    condition_score,
    generators_from_seeds,
    sample,
)
from latent_diffusion.utils.errors import UserError

M, S = 0.5, 1.0
SHAPE = (4000, 1, 2, 2)  # D = 4 elements per image
PHI = 0.5 * (1 + math.erf(M * 2 / S / math.sqrt(2)))  # Phi(M sqrt(D) / S) = Phi(1) = 0.841


def diffusion(prediction="eps"):
    # a fixed (small) variance: the mixture's true reverse variance has no closed form to learn
    return GaussianDiffusion(
        betas_for("linear", 1000),
        prediction=prediction,
        learn_sigma=False,
        loss="mse",
        fixed_variance="small",
    )


def _a_b_v(d, t, like):
    acp = torch.as_tensor(d.schedule.alphas_cumprod, dtype=torch.float64)[t].view(-1, 1, 1, 1)
    a, b = acp.sqrt(), (1 - acp).sqrt()
    return a, b, a * a * S * S + b * b


def class_log_probs(d, x, t):
    """Exact log p(y | x_t) (B, 2), t original timesteps."""
    a, _, v = _a_b_v(d, t, x)
    x = x.double()
    d2 = torch.stack([((x - a * mu) ** 2).flatten(1).sum(1) for mu in (-M, M)], 1)  # (B, 2)
    return torch.log_softmax(-d2 / (2 * v.view(-1, 1)), 1)


class ExactClassifier(nn.Module):
    """classifier(x_t, t) -> logits (B, 2); a parameter so a stray backward would show in .grad."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return self.gain * class_log_probs(self.d, x, t)


class ExactDenoiser(nn.Module):
    """Unconditional model(x_t, t) -> the exact prediction; records whether autograd was on."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.gain = nn.Parameter(torch.ones(()))
        self.grad_enabled = []

    def forward(self, x, t, y=None):
        self.grad_enabled.append(torch.is_grad_enabled())
        a, b, v = _a_b_v(self.d, t, x)
        p = class_log_probs(self.d, x, t).exp()  # (B, 2)
        x = x.double()
        x0 = sum(
            p[:, k].view(-1, 1, 1, 1) * (mu + a * S * S * (x - a * mu) / v)
            for k, mu in enumerate((-M, M))
        )
        eps = (x - a * x0) / b
        pred = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.d.prediction]
        return (self.gain * pred).float()


def along_class(x, y):
    """Mean over elements of x, signed towards class y's side -> (B,)."""
    sign = torch.where(y == 1, 1.0, -1.0)
    return x.flatten(1).mean(1) * sign


CASES = [("ddpm", 250), ("ddim", 50), ("dpmpp", 20)]


@pytest.mark.parametrize("sampler,steps", CASES)
def test_scale_one_gives_the_class_conditional_distribution(sampler, steps):
    d = diffusion()
    model = ExactDenoiser(d)
    y = torch.arange(SHAPE[0]) % 2
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = sample(sampler, d, model, SHAPE, steps=steps, generators=gen())
    x = sample(
        sampler,
        d,
        model,
        SHAPE,
        steps=steps,
        generators=gen(),
        cond_fn=classifier_cond_fn(ExactClassifier(d), y, 1.0),
    )
    side_plain = (along_class(plain, y) > 0).float().mean().item()
    side = (along_class(x, y) > 0).float().mean().item()
    # unguided: half of the images on the requested side; guided: Phi(1) = 0.841 of them
    assert abs(side_plain - 0.5) < 0.03
    assert abs(side - PHI) < 0.03, (side, PHI)
    # the class mean: +M per element along the class direction, and the spread S around it
    shift = along_class(x, y)
    assert abs(shift.mean().item() - M) < 0.04
    resid = x.flatten(1) - torch.where(y == 1, M, -M).view(-1, 1)
    assert abs(resid.std().item() - S) < 0.05


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 50), ("dpmpp", 20)])
def test_larger_scales_move_further_and_scale_zero_is_the_unguided_sampler(sampler, steps):
    d = diffusion("v")  # v: condition_score shifts a prediction it did not compute from eps
    model = ExactDenoiser(d)
    n = 1000
    y = torch.arange(n) % 2
    shape = (n, *SHAPE[1:])
    gens = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = sample(sampler, d, model, shape, steps=steps, generators=gens())
    cls = ExactClassifier(d)
    zero = sample(
        sampler,
        d,
        model,
        shape,
        steps=steps,
        generators=gens(),
        cond_fn=classifier_cond_fn(cls, y, 0.0),
    )
    assert torch.equal(zero, plain)
    means = [
        along_class(
            sample(
                sampler,
                d,
                model,
                shape,
                steps=steps,
                generators=gens(),
                cond_fn=classifier_cond_fn(cls, y, s),
            ),
            y,
        )
        .mean()
        .item()
        for s in (1.0, 4.0)
    ]
    assert means[1] > means[0] + 0.1 > 0.1 + 0.4


def test_condition_score_is_the_score_shift():
    """eps' = eps - sqrt(1 - acp) g and x0' = x0 + (1 - acp) / sqrt(acp) g, consistent with x_t."""
    d = diffusion()
    x, eps, g = torch.randn(3, 2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10, 700])
    x0 = d.x0_from_eps(x, t, eps)
    x0g, epsg = condition_score(d, x, t, x0, eps, g)
    b = torch.as_tensor(d.schedule.sqrt_one_minus_alphas_cumprod)[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(epsg, eps - b * g)
    torch.testing.assert_close(x0g, d.x0_from_eps(x, t, epsg))


def test_gradients_flow_only_through_the_classifier_and_images_ignore_the_batch():
    d = diffusion()
    model, cls = ExactDenoiser(d), ExactClassifier(d)
    seeds, y = [7, 8, 9], torch.tensor([1, 0, 1])
    for sampler, kw in [
        ("ddpm", dict(steps=20)),
        ("ddim", dict(steps=10, eta=1.0)),
        ("dpmpp", dict(steps=8)),
    ]:
        whole = sample(
            sampler,
            d,
            model,
            (3, 1, 2, 2),
            generators=generators_from_seeds(seeds),
            cond_fn=classifier_cond_fn(cls, y, 2.0),
            **kw,
        )
        parts = [
            sample(
                sampler,
                d,
                model,
                (1, 1, 2, 2),
                generators=generators_from_seeds([s]),
                cond_fn=classifier_cond_fn(cls, y[i : i + 1], 2.0),
                **kw,
            )
            for i, s in enumerate(seeds)
        ]
        torch.testing.assert_close(whole, torch.cat(parts), rtol=0, atol=1e-6)
    assert model.grad_enabled and not any(model.grad_enabled)  # the denoiser ran under no_grad
    assert model.gain.grad is None and cls.gain.grad is None  # autograd.grad wrt x_t only


def test_classifier_guidance_combines_with_classifier_free_guidance():
    """CFG (w on a conditional toy) and the classifier shift add up in the score."""
    d = diffusion()
    base = ExactDenoiser(d)
    y = torch.ones(2000, dtype=torch.long)

    def cond_model(x, t, yy):
        # the "conditional" branch here is the unconditional toy pushed by +0.2 in x0;
        # its null branch (label 2) is the toy itself
        out = base(x, t)
        a, b, _ = _a_b_v(d, t, x)
        return torch.where((yy == 2).view(-1, 1, 1, 1), out, out - (a * 0.2 / b).float())

    shape = (2000, 1, 2, 2)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    cfg = sample("ddim", d, cfg_model_fn(cond_model, y, 2, 2.0), shape, steps=50, generators=gen())
    both = sample(
        "ddim",
        d,
        cfg_model_fn(cond_model, y, 2, 2.0),
        shape,
        steps=50,
        generators=gen(),
        cond_fn=classifier_cond_fn(ExactClassifier(d), y, 1.0),
    )
    cls = sample(
        "ddim",
        d,
        base,
        shape,
        steps=50,
        generators=gen(),
        cond_fn=classifier_cond_fn(ExactClassifier(d), y, 1.0),
    )
    m_cfg, m_both, m_cls = (along_class(x, y).mean().item() for x in (cfg, both, cls))
    assert m_both > max(m_cfg, m_cls) + 0.1


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "much"])
def test_bad_scales_are_refused(bad):
    with pytest.raises(UserError, match="classifier_scale"):
        classifier_cond_fn(lambda x, t: x, torch.zeros(1, dtype=torch.long), bad)
