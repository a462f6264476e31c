"""Every named experiment composes through the Hydra search path and builds its denoiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF.parent / "experiments").glob("*.yaml"))


def _compose(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"])


def test_the_documented_experiments_exist():
    assert {"microdoppler_small", "microdoppler_128", "pixel_baseline", "gpu_base"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e != "gpu_base"])
def test_experiment_builds_a_denoiser_for_its_input(name):
    cfg = _compose(name)
    size = cfg.data.image_size
    # what train.py derives: a 4-channel latent of an f4 VAE, or the 1-channel image itself
    c, s = (1, size) if cfg.vae.name == "none" else (4, size // 4)
    model = instantiate(cfg.model, in_channels=c, sample_size=s, num_classes=8,
                        learn_sigma=cfg.diffusion.learn_sigma)
    with torch.no_grad():
        out = model(torch.randn(2, c, s, s), torch.tensor([1, 999]), torch.tensor([0, 7]))
    assert out.shape == (2, 2 * c, s, s)


def test_gpu_recipe_is_bf16_ddp_at_base_size():
    cfg = _compose("gpu_base")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == -1
    assert cfg.trainer.strategy.broadcast_buffers is False
    assert cfg.model.name == "base" and cfg.data.image_size == 128
