"""Every named experiment composes through the Hydra search path and builds its denoiser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF.parent / "experiments").glob("*.yaml"))


def _compose(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"])


def test_the_documented_experiments_exist():
    assert {"microdoppler_small", "microdoppler_128", "pixel_baseline", "gpu_base"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e != "gpu_base"])
def test_experiment_builds_a_denoiser_for_its_input(name):
    cfg = _compose(name)
    size = cfg.data.image_size
    # what train.py derives: a 4-channel latent of an f4 VAE, or the 1-channel image itself
    c, s = (1, size) if cfg.vae.name == "none" else (4, size // 4)
    model = instantiate(
        cfg.model,
        in_channels=c,
        sample_size=s,
        num_classes=8,
        learn_sigma=cfg.diffusion.learn_sigma,
    )
    with torch.no_grad():
        out = model(torch.randn(2, c, s, s), torch.tensor([1, 999]), torch.tensor([0, 7]))
    assert out.shape == (2, 2 * c, s, s)


def test_gpu_recipe_is_bf16_ddp_at_base_size():
    cfg = _compose("gpu_base")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == -1
    assert cfg.trainer.strategy.broadcast_buffers is False
    assert cfg.model.name == "base" and cfg.data.image_size == 128


# ------------------------------------------------------------------ each experiment trains


# what each experiment feeds its denoiser: f4 latents of 64 or 128 px, or the pixels themselves
LATENT_SHAPE = {
    "microdoppler_small": (4, 16, 16),
    "microdoppler_128": (4, 32, 32),
    "pixel_baseline": (1, 64, 64),
    "gpu_base": (4, 32, 32),
    "demo": (4, 16, 16),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_two_steps_with_the_tiny_model(name, workdir):
    """Each experiment's data, VAE, levels and diffusion, with model=tiny for two steps, in
    the shared work folder (the VAEs are trained once per image size)."""
    from latent_diffusion.lit.export import load_export
    from latent_diffusion.train import train

    out = workdir / "outputs" / "experiments" / name
    overrides = [
        f"experiment={name}",
        "model=tiny",
        "debug=fast",
        "logger=csv",
        "trainer.max_steps=2",
        f"paths.root_dir={workdir}",
        f"paths.output_dir={out}",
    ]
    if name == "gpu_base":  # the GPU recipe on one CPU process, with base's levels for 32x32
        overrides += ["trainer=cpu", "trainer.precision=32-true", "model.channel_mult=[1,2,3,4]"]
    if LATENT_SHAPE.get(name, (0, 0))[1] == 32:  # a 128 px VAE of its own: 2 steps make a VAE
        overrides += ["vae.max_steps=2"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["train/loss"])
    exp = load_export(out)
    assert exp.latent_shape == LATENT_SHAPE.get(name, exp.latent_shape)
    # the experiment's own levels survive the model=tiny override; the widths are tiny's
    exported = OmegaConf.load(out / "export" / "config.yaml")
    wanted = OmegaConf.select(cfg, "model.channel_mult")
    own = OmegaConf.select(
        OmegaConf.load(CONF.parent / "experiments" / f"{name}.yaml"), "model.channel_mult"
    )
    assert list(exported.model.channel_mult) == list(wanted)
    if own is not None and name != "gpu_base":
        assert list(wanted) == list(own)
    assert exported.model.base_channels == 32
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 2
