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
    "distill": ["run=R", "steps=[4,2]", "default_steps=2", "guidance_range=[1,5]"],
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
    "distill": ("guidance_range", [1, 5]),
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


# ------------------------------------------------------------------ values the code derives
def test_simulate_overrides_reach_what_is_written(tmp_path):
    """image_size, classes, n_per_class and seed as simulate's own code uses them: the files
    it writes, not the composed value echoed back."""
    import json

    import numpy as np
    from PIL import Image

    from latent_diffusion.simulate import simulate

    cfg = _compose("simulate", [*ENTRY_POINTS["simulate"][1:], f"out_dir={tmp_path / 'sim'}"])
    out = simulate(cfg)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["class_names"] == ["walk", "run"] and meta["seed"] == 1
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_0*.png"))
    assert files == [f"{c}/{c}_{i:05d}.png" for c in ("run", "walk") for i in range(3)]
    assert np.asarray(Image.open(out / files[0])).shape == (128, 128)


def test_sample_overrides_name_the_output_folder_and_the_steps():
    from latent_diffusion.sampling import check_args, default_out_dir

    cfg = _compose("sample", ENTRY_POINTS["sample"])
    steps = check_args(
        cfg.sampler, cfg.steps, cfg.guidance, cfg.n_per_class, cfg.batch_size, cfg.eta, 1000
    )
    assert steps == 50
    out = default_out_dir(Path("R/export"), cfg.sampler, steps, cfg.guidance, cfg.seed)
    assert out == Path("R/samples/ddim-50-w2-seed3")
    # no steps given: the sampler's own default from the one table of samplers
    dflt = _compose("sample", ["run=R", "sampler=dpmpp"])
    assert check_args("dpmpp", dflt.steps, 1.0, 1, 1, 0.0, 1000) == 20  # DPM-Solver++'s default


def test_bench_quick_settings_apply_and_the_command_line_wins():
    from latent_diffusion.bench import with_quick

    cli = ["quick=true", "repeats=5"]
    cfg = with_quick(_compose("bench", ["out_dir=D", *cli]), cli)
    assert cfg.threads == 1 and cfg.batch_size == 8 and cfg.train.models == ["tiny"]  # quick's
    assert cfg.repeats == 5  # the user's, over quick_settings' 2
    full = with_quick(_compose("bench", ["out_dir=D"]), [])
    assert full.batch_size == 32 and full.train.models != ["tiny"]
