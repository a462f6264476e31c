"""Every entry point's config composes (what `--cfg job` prints), with the documented overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
ENTRY_POINTS = {
    "simulate": ["out_dir=D", "n_per_class=3", "image_size=128", "seed=1", "classes=[walk,run]"],
    "train_vae": ["vae=f8", "trainer.max_steps=5", "out_dir=D"],
    "train": [
        "model=small",
        "data=microdoppler",
        "data.latents=cached",
        "trainer=ddp_sim",
        "logger=tensorboard",
        "vae.path=V",
        "ckpt_path=last",
    ],
    "sample": ["run=R", "sampler=ddim", "steps=50", "guidance=2", "n_per_class=4", "seed=3"],
    "evaluate": ["real=image_folder", "real.root=DIR", "generated=G", "out_dir=D"],
    "bench": ["out_dir=D", "quick=true"],
}


def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


# one documented override per entry point, and where it must land in the composed config
LANDS = {
    "simulate": ("image_size", 128),
    "train_vae": ("vae.module.autoencoder.block_out_channels", None),  # f8: one more level than f4
    "train": ("trainer.strategy.start_method", "spawn"),
    "sample": ("guidance", 2),
    "evaluate": ("real.source", "image_folder"),
    "bench": ("quick", True),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_config_composes(name):
    cfg = _compose(name, ENTRY_POINTS[name])
    assert cfg.task_name == name
    key, want = LANDS[name]
    got = OmegaConf.select(cfg, key)
    if name == "train_vae":
        assert len(got) == 4 and cfg.vae.name == "f8"
    else:
        assert got == want, (key, got)


def test_evaluate_real_takes_any_data_config():
    cfg = _compose("evaluate", ["real=image_folder", "real.root=/data/diat", "generated=G"])
    assert cfg.real.source == "image_folder" and cfg.real.root == "/data/diat"
    cfg = _compose("evaluate", ["generated=G", "real.n_per_class=30"])
    assert cfg.real.source == "microdoppler" and cfg.real.n_per_class == 30


def test_wandb_logger_is_offline_unless_wandb_mode_says_online(monkeypatch):
    import latent_diffusion  # noqa: F401  (registers the resolver)

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert _compose("train", ["logger=wandb"]).logger.wandb.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert _compose("train", ["logger=wandb"]).logger.wandb.offline is False


def test_quality_callback_shares_evaluate_domain_classifier():
    """callbacks=quality logs eval/cas and eval/fid_domain with the very classifier `evaluate`
    caches."""
    from hydra import compose, initialize_config_dir

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        train = compose(
            config_name="train", overrides=["callbacks=quality"], return_hydra_config=True
        )
        ev = compose(config_name="evaluate", overrides=["generated=x"], return_hydra_config=True)
    cb = train.callbacks
    assert {"model_checkpoint", "sample_grid", "domain_metrics"} <= set(cb)
    assert dict(cb.domain_metrics.classifier) == dict(ev.classifier)
    raw = OmegaConf.to_container(cb.domain_metrics, resolve=False)
    assert raw["cache_dir"] == OmegaConf.to_container(ev, resolve=False)["cache_dir"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["vae=none"], "data.latents=online needs a VAE, but vae=none"),
        (["vae=none", "data.latents=cached"], "data.latents=cached needs a VAE"),
        (["data.latents=pixel"], "data.latents=pixel trains on pixels, but vae=f4"),
    ],
)
def test_data_latents_that_contradict_the_vae_choice_are_refused_not_rewritten(overrides, needle):
    from latent_diffusion.train import check_latents_mode
    from latent_diffusion.utils.errors import UserError

    with pytest.raises(UserError, match=needle):
        check_latents_mode(_compose("train", overrides))
    check_latents_mode(
        _compose("train", ["experiment=pixel_baseline"])
    )  # the documented way: accepted
