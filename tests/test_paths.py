"""End-to-end paths a user takes that the other tests do not: a folder of images trained
with the user's own diffusers VAE, logger=tensorboard, DiT in pixel space without a VAE, and
each export sampled with the sampler's own default step count. In-process through the
entry points' own functions (`train.train`, `sampling.sample_run`) on composed configs:
the CLI wrapper around them is the same for every entry point and tested elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["model=tiny", "debug=fast", "~callbacks.sample_grid", "trainer.enable_progress_bar=false"]


def _compose(name: str, root: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        if name == "train":
            cfg.paths.output_dir = str(root / "outputs" / cfg.run_name)
            cfg.export_dir = str(root / "outputs" / cfg.run_name / "export")
    return cfg


def _train_and_sample(root: Path, run: str, overrides: list[str], sample: list[str]) -> dict:
    from latent_diffusion.sampling import sample_run
    from latent_diffusion.train import train
    from latent_diffusion.validation import preflight

    cfg = _compose("train", root, [*FAST, f"run_name={run}", *overrides])
    preflight("train", cfg)
    train(cfg)
    scfg = _compose(
        "sample", root, [f"run={cfg.export_dir}", f"out_dir={root / run}-samples", *sample]
    )
    preflight("sample", scfg)
    out = sample_run(scfg)
    with np.load(out / "samples.npz") as z:
        images = z["arr_0"]
    return {
        "run": Path(cfg.paths.output_dir),
        "images": images,
        "meta": json.loads((out / "metadata.json").read_text()),
    }


def test_logger_tensorboard_without_its_package_is_refused_up_front(tmp_path):
    """TensorBoard is Lightning's, not one of our dependencies: without it the run is refused
    before the data and the VAE, naming the package (with it, its event file is written)."""
    from importlib.util import find_spec

    from latent_diffusion.utils.errors import UserError
    from latent_diffusion.validation import preflight

    cfg = _compose("train", tmp_path, [*FAST, "logger=tensorboard", "run_name=tb"])
    if find_spec("tensorboard") or find_spec("tensorboardX"):
        preflight("train", cfg)
        from latent_diffusion.train import train

        train(cfg)
        assert list((tmp_path / "outputs" / "tb").rglob("events.out.tfevents.*"))
    else:
        with pytest.raises(UserError, match=r"logger=tensorboard needs the tensorboard package"):
            preflight("train", cfg)
        assert not (tmp_path / ".cache").exists()


def test_image_folder_with_a_users_vae(tmp_path, recwarn):
    """data=image_folder on PNGs in class folders (what `simulate` writes), vae=pretrained with a
    diffusers VAE folder that has no latent_stats.json (measured on the data, said once);
    then `sample` with DPM-Solver++ and no step count (its default, 20)."""
    from latent_diffusion.simulate import simulate
    from latent_diffusion.vae.module import build_autoencoder

    data = simulate(
        _compose(
            "simulate",
            tmp_path,
            [f"out_dir={tmp_path / 'pngs'}", "n_per_class=12", "classes=[walk,fall,box]"],
        )
    )
    vae = tmp_path / "my_vae"
    torch.manual_seed(0)
    build_autoencoder(block_out_channels=(8, 16, 16), norm_num_groups=8).save_pretrained(vae)
    res = _train_and_sample(
        tmp_path,
        "folder",
        [
            "data=image_folder",
            f"data.root={data}",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            "vae=pretrained",
            f"vae.path={vae}",
            "logger=csv",
        ],
        ["sampler=dpmpp", "n_per_class=2", "classes=[box,walk]"],
    )
    assert any("no latent_stats.json" in str(w.message) for w in recwarn.list)
    export = json.loads((res["run"] / "export" / "export.json").read_text())
    assert sorted(export["class_names"]) == ["box", "fall", "walk"]
    assert res["meta"]["steps"] == 20 and res["meta"]["sampler"] == "dpmpp"
    assert res["images"].shape == (4, 64, 64, 1)


def test_dit_in_pixel_space_without_a_vae(tmp_path):
    """model=dit_s vae=none at 16x16: the denoiser works on the spectrogram itself; the export
    has no VAE and `sample` (DDIM, its default 50 steps) writes 16x16 images."""
    res = _train_and_sample(
        tmp_path,
        "dit",
        [
            "model=dit_s",
            "vae=none",
            "data.latents=pixel",
            "data.image_size=16",
            "trainer.max_steps=2",
        ],
        ["sampler=ddim", "n_per_class=1", "classes=[walk,run]"],
    )
    export = json.loads((res["run"] / "export" / "export.json").read_text())
    assert export.get("vae") in (None, {}) or export["vae"].get("path") is None, export.get("vae")
    assert res["meta"]["steps"] == 50 and res["images"].shape == (2, 16, 16, 1)
    assert res["images"].std() > 0  # not a constant image
