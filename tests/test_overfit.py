"""The LightningModule learns: on a tiny fixed set the diffusion loss falls clearly."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from latent_diffusion.diffusion import create_diffusion
from latent_diffusion.lit.module import LatentDiffusion
from latent_diffusion.models import create_model


class FixedLatents(Dataset):
    """16 fixed 'latents' of 2 classes: class 0 a positive blob, class 1 a negative one."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        blob = torch.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 6)
        self.y = torch.arange(16) % 2
        sign = 1 - 2 * self.y.float()
        self.x = sign.view(-1, 1, 1, 1) * blob.expand(16, 4, 8, 8) * 1.5
        self.x = self.x + 0.1 * torch.randn(self.x.shape, generator=g)

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


@torch.no_grad()
def fixed_loss(module: LatentDiffusion, data: FixedLatents) -> float:
    """Mean hybrid loss of the raw denoiser at fixed timesteps and noise."""
    module.eval()
    g = torch.Generator().manual_seed(1)
    losses = []
    for t_val in (50, 200, 400, 700):
        t = torch.full((16,), t_val)
        noise = torch.randn(data.x.shape, generator=g)
        out = module.diffusion.training_losses(
            lambda x_t, tt: module.denoiser(x_t, tt, data.y), data.x, t, noise=noise
        )
        losses.append(out["mse"].mean())
    module.train()
    return float(torch.stack(losses).mean())


@pytest.mark.slow
def test_loss_falls_on_a_tiny_fixed_set():
    L.seed_everything(0)
    data = FixedLatents()
    denoiser = create_model("tiny", in_channels=4, num_classes=2, sample_size=8, learn_sigma=True)
    module = LatentDiffusion(
        denoiser=denoiser,
        diffusion=create_diffusion(),
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
        class_names=["a", "b"],
        latent_shape=(4, 8, 8),
        vae=None,
        warmup_steps=10,
    )
    before = fixed_loss(module, data)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=150,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=16, shuffle=True))
    after = fixed_loss(module, data)
    assert before == pytest.approx(1.0, abs=0.15)  # zero-initialised output: mse = E[eps^2]
    assert after < 0.5 * before, (before, after)
    assert int(module.ema.num_updates) == 150


def test_non_finite_losses_skip_steps_then_stop_the_run():
    data = FixedLatents()
    data.x[:] = float("nan")  # every batch poisons the loss
    denoiser = create_model("tiny", in_channels=4, num_classes=2, sample_size=8, learn_sigma=True)
    module = LatentDiffusion(
        denoiser=denoiser,
        diffusion=create_diffusion(),
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
        class_names=["a", "b"],
        latent_shape=(4, 8, 8),
        vae=None,
        max_bad_steps=2,
    )
    before = {k: v.clone() for k, v in denoiser.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        trainer.fit(module, DataLoader(data, batch_size=16))
    assert module.skipped_steps == 3  # two skipped, the third stops the run
    for k, v in denoiser.state_dict().items():  # no step touched the weights
        assert torch.equal(v, before[k]), k
    assert int(module.ema.num_updates) == 0


def test_diffusion_draws_differ_by_rank_and_step_and_repeat_exactly():
    from latent_diffusion.lit.module import step_generators

    def draw(seed, rank, step):
        g_cpu, g_dev = step_generators(seed, rank, step, "cpu")
        return torch.randn(64, generator=g_dev)

    a = draw(0, 0, 10)
    torch.testing.assert_close(a, draw(0, 0, 10), rtol=0, atol=0)  # a resumed step draws the same
    for other in (draw(0, 1, 10), draw(0, 0, 11), draw(1, 0, 10)):  # another rank, step or seed
        assert (a - other).abs().mean() > 0.5
