"""EMA of the denoiser: warm-up schedule, convergence, swap/restore, checkpoint round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from latent_diffusion.lit.ema import EMA
from latent_diffusion.models.unet import ADMUNet

MICRO = dict(
    base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), head_dim=32
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _randomize(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_warmup_decay_values():
    ema = EMA(_net(), decay=0.9999)
    assert ema.decay_at(0) == pytest.approx(1 / 10)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**7) == pytest.approx(0.9999)  # the cap takes over
    assert EMA(_net(), decay=0.9, warmup=False).decay_at(0) == 0.9


def test_first_update_follows_the_formula():
    model = _net()
    ema = EMA(model, decay=0.9999)
    start = model[0].weight.detach().clone()
    _randomize(model, 1)
    assert ema.update(model, step=0)
    beta = 0.1  # min(0.9999, 1/10)
    expected = beta * start + (1 - beta) * model[0].weight.detach()
    torch.testing.assert_close(ema.shadow()["0.weight"], expected)
    assert int(ema.num_updates) == 1


def test_converges_to_a_constant_model_and_skips_repeated_steps():
    model = _net()
    ema = EMA(model, decay=0.99)
    _randomize(model, 2)  # far from the EMA's starting copy
    for step in range(2000):
        ema.update(model, step=step)
    # 0.99^~1900 ~ 5e-9 of the start remains.
    for name, avg in ema.shadow().items():
        torch.testing.assert_close(avg, model.state_dict()[name].float(), rtol=0, atol=1e-6)
    # Gradient accumulation calls update several times per optimizer step: one update.
    n = int(ema.num_updates)
    assert not ema.update(model, step=1999)
    assert int(ema.num_updates) == n


def test_half_life_in_images():
    ema = EMA(_net(), warmup=False, half_life_images=1000)
    assert ema.decay_at(0, images_per_step=1000) == pytest.approx(0.5)
    assert ema.decay_at(0, images_per_step=10) == pytest.approx(0.5**0.01)
    with pytest.raises(ValueError, match="images_per_step"):
        ema.decay_at(0)


def test_swap_into_restores_training_weights_exactly():
    model = ADMUNet(in_channels=4, num_classes=3, sample_size=8, **MICRO)
    ema = EMA(model)
    _randomize(model, 3)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.tensor([1])
    with ema.swap_into(model.eval()) as swapped:
        assert swapped is model
        for name, avg in ema.shadow().items():
            assert torch.equal(model.state_dict()[name], avg)
        with torch.no_grad():
            out = model(x, t, y)
        assert torch.equal(out, torch.zeros_like(out))  # EMA still holds the zero-init output conv
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # Restored even when sampling raises.
    with pytest.raises(RuntimeError):
        with ema.swap_into(model):
            raise RuntimeError("sampler failed")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_copy_to_and_state_dict_round_trip():
    model = _net()
    ema = EMA(model, decay=0.9)
    for step in range(5):
        _randomize(model, 10 + step)
        ema.update(model, step=step)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    fresh = EMA(_net(seed=7), decay=0.9)
    fresh.load_state_dict(torch.load(buf))
    assert int(fresh.num_updates) == 5 and int(fresh.last_step) == 4
    for name, avg in ema.shadow().items():
        assert torch.equal(fresh.shadow()[name], avg)
    # The warm-up continues where it stopped after a resume.
    assert fresh.decay_at(int(fresh.num_updates)) == ema.decay_at(5)
    target = _net(seed=8)
    fresh.copy_to(target)
    for name, avg in ema.shadow().items():
        assert torch.equal(target.state_dict()[name].float(), avg)


def test_holds_no_trainable_parameters_and_lives_in_the_parent_checkpoint():
    class Lit(nn.Module):  # the shape of the LightningModule: denoiser + its EMA, no VAE copy
        def __init__(self):
            super().__init__()
            self.denoiser = _net()
            self.ema = EMA(self.denoiser)

    lit = Lit()
    assert list(lit.ema.parameters()) == []
    assert all(not b.requires_grad for b in lit.ema.buffers())
    assert all(b.dtype in (torch.float32, torch.long) for b in lit.ema.buffers())
    # The optimizer sees the denoiser's parameters once, never the shadow copy.
    assert sum(p.numel() for p in lit.parameters()) == sum(
        p.numel() for p in lit.denoiser.parameters()
    )
    keys = lit.state_dict().keys()
    assert "ema.0/weight" in keys and "ema.1/running_mean" in keys and "ema.num_updates" in keys
    # Integer buffers (BatchNorm's num_batches_tracked) are not averaged.
    assert "1.num_batches_tracked" not in lit.ema.names


def test_compiled_wrapper_uses_the_same_names():
    """torch.compile's wrapper prefixes keys with _orig_mod.; the EMA sees through it.
    (Wrapping is lazy: nothing is compiled unless the module is called.)"""
    model = _net()
    compiled = torch.compile(model)
    assert "_orig_mod.0.weight" in compiled.state_dict()
    ema = EMA(compiled, decay=0.5, warmup=False)
    assert "0.weight" in ema.names
    _randomize(model, 4)
    ema.update(compiled, step=0)
    target = _net(seed=9)
    ema.copy_to(torch.compile(target))
    torch.testing.assert_close(target[0].weight, ema.shadow()["0.weight"])
