"""The VAE stage: frozen interface, measured latent stats, train_vae end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel
from torch.utils.data import DataLoader
from torchmetrics.functional.image import peak_signal_noise_ratio

from latent_diffusion.data.datamodule import SpectrogramDataModule
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import file_hash
from latent_diffusion.vae import FrozenVAE, LatentStatsWarning, load_latent_stats
from latent_diffusion.vae.module import build_autoencoder, to_unit

ROOT = Path(__file__).resolve().parent.parent


def _batches(x: torch.Tensor, bs: int = 32):
    return lambda: DataLoader(x, batch_size=bs, shuffle=False)


def _random_images(n=64, c=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish blobs in [-1, 1]: enough structure for a random encoder's statistics
    x = torch.rand(n, c, size // 8, size // 8, generator=g)
    return (torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear") * 2 - 1).clamp(
        -1, 1
    )


def _save_rgb_f8(folder: Path) -> AutoencoderKL:
    """A randomly initialised 3-channel f8 AutoencoderKL saved the diffusers way."""
    torch.manual_seed(0)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    model.save_pretrained(folder)
    return model


# ------------------------------------------------------------------ shapes and scaling


def test_encode_decode_shapes_f4_64_and_128():
    model = build_autoencoder(block_out_channels=(8, 16, 16), norm_num_groups=8)
    vae = FrozenVAE(model, None, data_channels=1, weights_hash="x")
    vae.ensure_stats(_batches(_random_images(40)), None, min_latents=40)
    assert vae.latent_shape(64) == (4, 16, 16)
    assert vae.latent_shape(128) == (4, 32, 32)
    for size in (64, 128):
        x = _random_images(3, size=size)
        z = vae.encode(x)
        assert z.shape == (3, *vae.latent_shape(size))
        mean, std = vae.encode_posterior(x)
        assert mean.shape == std.shape == z.shape and (std > 0).all()
        xr = vae.decode(z)
        assert xr.shape == x.shape and xr.min() >= -1 and xr.max() <= 1
    # frozen: no gradients, eval mode, and not an nn.Module (so never a submodule of the denoiser)
    assert not any(p.requires_grad for p in vae.model.parameters())
    assert not vae.model.training and not isinstance(vae, torch.nn.Module)
    with pytest.raises(UserError, match="multiple"):
        vae.latent_shape(66)


def test_per_channel_and_global_stats_standardise_the_latents():
    model = build_autoencoder(block_out_channels=(8, 16, 16), norm_num_groups=8)
    x = _random_images(96, seed=1)
    vae = FrozenVAE(model, None, data_channels=1, weights_hash="x")
    stats = vae.ensure_stats(_batches(x), None, per_channel=True, min_latents=96)
    assert stats.per_channel and len(stats.scale) == 4 and stats.n_latents >= 96
    z = torch.cat([vae.encode(x[i : i + 32]) for i in range(0, 96, 32)])  # fresh posterior samples
    std = z.transpose(0, 1).reshape(4, -1).std(dim=1)
    assert torch.allclose(std, torch.ones(4), atol=0.1), std
    # global option: one pair; the pooled latents have unit variance
    gvae = FrozenVAE(model, None, 1, "x")
    g = gvae.ensure_stats(_batches(x), None, per_channel=False, min_latents=96)
    assert len(g.scale) == len(g.shift) == 1 and not g.per_channel
    zg = torch.cat([gvae.encode(x[i : i + 32]) for i in range(0, 96, 32)])
    assert abs(float(zg.std()) - 1) < 0.1 and abs(float(zg.mean())) < 0.1, (zg.std(), zg.mean())


# ------------------------------------------------------------------ a user's own diffusers VAE


def test_pretrained_diffusers_vae_in_a_pipeline_folder(tmp_path):
    pipe = tmp_path / "my_pipeline"
    raw = _save_rgb_f8(pipe / "vae").eval()
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    x = _random_images(48, c=1, seed=2)  # 1-channel spectrograms on a 3-channel VAE
    cache = tmp_path / "cache"

    # First use: no latent_stats.json -> measured on the data, with a warning; cached, folder
    # untouched.
    with pytest.warns(LatentStatsWarning, match="no latent_stats.json"):
        vae = FrozenVAE.load(
            pipe,
            1,
            train_batches=_batches(x),
            data_fingerprint={"d": 1},
            min_latents=48,
            cache_dir=cache,
        )
    assert vae.path == pipe / "vae" and vae.downsample_factor == 8
    assert vae.weights_hash == file_hash(pipe / "vae" / "diffusion_pytorch_model.safetensors")
    assert vae.stats.source == "measured" and vae.stats.vae_hash == vae.weights_hash
    assert not (pipe / "vae" / "latent_stats.json").exists()
    assert len(list((cache / "vae_stats").glob("*.json"))) == 1
    z = vae.encode(x[:4])
    assert z.shape == (4, 4, 8, 8) and vae.latent_shape(128) == (4, 16, 16)
    # the grey <-> RGB bridge against the raw diffusers model: the grey image repeated into
    # the three input channels, the three decoded channels averaged back into one
    with torch.no_grad():
        raw_mean = raw.encode(x[:4].repeat(1, 3, 1, 1)).latent_dist.mean
        raw_rgb = raw.decode(vae.unscale_latents(z)).sample  # (4, 3, 64, 64)
    torch.testing.assert_close(vae.posterior(x[:4])[0], raw_mean)
    assert (raw_rgb[:, 0] - raw_rgb[:, 1]).abs().max() > 1e-3  # the channels differ: a real mean
    torch.testing.assert_close(vae.decode(z), raw_rgb.mean(1, keepdim=True).clamp(-1, 1))

    # Second use: the cached stats are reused without measuring (no warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatentStatsWarning)
        again = FrozenVAE.load(
            pipe / "vae",
            1,
            train_batches=_batches(x),
            data_fingerprint={"d": 1},
            min_latents=48,
            cache_dir=cache,
        )
    assert again.stats.scale == vae.stats.scale

    # No data to measure on: the config's scaling_factor, with a warning that says so.
    with pytest.warns(LatentStatsWarning, match="scaling_factor=0.18215"):
        fb = FrozenVAE.load(pipe, 1)
    assert fb.stats.scale == [0.18215] and fb.stats.source.startswith("config")


def test_bad_vae_paths_name_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"{missing}.*does not exist.*save_pretrained"):
        FrozenVAE.load(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=f"{empty}.*not a diffusers model folder"):
        FrozenVAE.load(empty)
    unet = tmp_path / "unet"
    UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    ).save_pretrained(unet)
    with pytest.raises(UserError, match="UNet2DModel, not an AutoencoderKL"):
        FrozenVAE.load(unet)
    rgb = tmp_path / "rgb"
    _save_rgb_f8(rgb)
    (rgb / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match=f"{rgb}.*no weights"):
        FrozenVAE.load(rgb)
    grey = tmp_path / "grey"
    build_autoencoder(block_out_channels=(8, 8, 8), norm_num_groups=4).save_pretrained(grey)
    with pytest.raises(UserError, match=f"{grey}.*in/out channels 1/1.*data has 3"):
        FrozenVAE.load(grey, data_channels=3)


# ------------------------------------------------------------------ train_vae end to end


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A small f4 VAE trained briefly by the real CLI on simulated spectrograms."""
    tmp = tmp_path_factory.mktemp("train_vae")
    overrides = [
        "data.n_per_class=16",
        "data.val_per_class=8",
        "data.test_per_class=8",
        f"data.cache_dir={tmp / 'sim'}",
        "data.batch_size=16",
        "trainer.max_steps=100",
        "vae.val_check_interval=100",
        "trainer.enable_progress_bar=false",
        "vae.module.autoencoder.block_out_channels=[8,16,32]",
        "vae.module.autoencoder.norm_num_groups=8",
        "vae.min_stats_latents=256",
        "vae.module.warmup_steps=10",
        "vae.module.lr=4e-3",
        "vae.module.num_threads=1",
        "vae.module.ema_decay=0.99",  # the export writes the EMA weights; checked below
        "vae.batch_size=16",
        f"paths.runs_dir={tmp / 'runs'}",
        "run_name=t",
        f"out_dir={tmp / 'vae'}",
        "+report.classifier.steps=40",
        f"report.cache_dir={tmp / 'eval_cache'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "latent_diffusion.train_vae", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dm = SpectrogramDataModule(
        source="microdoppler",
        n_per_class=16,
        val_per_class=8,
        test_per_class=8,
        cache_dir=str(tmp / "sim"),
    )
    return tmp / "vae", dm


@pytest.mark.slow
def test_train_vae_cli_writes_the_export(trained_export):
    out, dm = trained_export
    for name in (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "latent_stats.json",
        "reconstructions.png",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    stats = load_latent_stats(out / "latent_stats.json")
    assert stats.vae_hash == file_hash(out / "diffusion_pytorch_model.safetensors")
    assert (
        stats.n_latents >= 256
        and len(stats.scale) == 4
        and stats.data_fingerprint["counts"]["train"] == 16
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 100
    # the reconstructions' envelope shifts, on the simulator's axes (8 m/s over 64 rows)
    kin = metrics["val"]["kinematics"]
    assert kin["doppler_row_m_s"] == 0.25 and set(kin["per_class"]) == set(dm.class_names)
    assert set(kin["worst"]) <= set(kin["units"]) and kin["units"]["cadence"] == "Hz"
    # vae.module.ema_decay is set: the export holds the EMA weights, not the last step's
    from safetensors.torch import load_file

    exported = load_file(out / "diffusion_pytorch_model.safetensors")
    (ckpt,) = out.parent.joinpath("runs").rglob("*step=100.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in exported.items():
        assert torch.equal(tensor, state["ema." + name.replace(".", "/")]), name
    assert any(not torch.equal(t, state["vae." + n]) for n, t in exported.items())
    assert not list(out.parent.glob(".vae.*"))  # no temporary folder left behind
    # The reported figures are the exported VAE's, recomputed here on the validation split:
    # posterior-mean reconstructions, and the 32x32 area thumbnail (as many numbers as a
    # 4x16x16 latent) brought back up bicubically.
    val = torch.stack([x for x, _ in dm.dataset("val")])
    vae = FrozenVAE.load(out, 1)
    xr = vae.decode(vae.encode(val, sample=False))
    thumb = torch.nn.functional.interpolate(val, size=(32, 32), mode="area")
    base = torch.nn.functional.interpolate(thumb, size=(64, 64), mode="bicubic").clamp(-1, 1)
    m = metrics["val"]
    assert m["n_images"] == len(val) == 64
    for key, img in (("psnr", xr), ("psnr_bicubic_baseline", base)):
        want = float(peak_signal_noise_ratio(to_unit(img), to_unit(val), data_range=1.0))
        assert m[key] == pytest.approx(want, abs=1e-3), key
    mean_img = val.mean(0, keepdim=True).expand_as(val)
    psnr_mean = float(peak_signal_noise_ratio(to_unit(mean_img), to_unit(val), data_range=1.0))
    assert m["psnr"] > psnr_mean and 0 < m["ssim"] < 1 and 0 < m["ssim_bicubic_baseline"] < 1
    # the speckle contrast of the background, recomputed from the same two sets
    from latent_diffusion.metrics.texture import speckle_contrast

    for key, img in (("original", val), ("reconstruction", xr)):
        want = np.nanmedian(speckle_contrast(to_unit(img)[:, 0].numpy(), 45.0))
        assert m[f"speckle_contrast_{key}"] == pytest.approx(want, abs=1e-3), key
    assert m["speckle_contrast_ratio"] == pytest.approx(
        m["speckle_contrast_reconstruction"] / m["speckle_contrast_original"], abs=1e-3
    )
    # the VAE ceiling in the domain classifier's features, beside real vs real, at matched n
    fid = metrics["domain_fid"]
    assert fid["overall"]["n"] == 128  # 16 val + test images per class x 8 < 16 train x 8
    assert fid["overall"]["vae_ceiling"] > 0 and fid["overall"]["real_vs_real"] > 0
    assert fid["overall"]["ratio"] == pytest.approx(  # of the unrounded FIDs
        fid["overall"]["vae_ceiling"] / fid["overall"]["real_vs_real"], rel=5e-3
    )
    assert set(fid["per_class"]) == set(dm.class_names)
    assert all(v["n"] == 16 and "vae_ceiling" in v for v in fid["per_class"].values())
    # a 100-step VAE is a poor one: its reconstructions are further from the real images
    # than other real images are
    assert fid["overall"]["ratio"] > 1
    # reconstructions.png: originals (one per class), their reconstructions and the
    # difference x4, x3 nearest
    from PIL import Image

    png = np.asarray(Image.open(out / "reconstructions.png"))[::3, ::3]  # (3*66-2, 8*66-2)
    assert png.shape == (196, 526)
    from latent_diffusion.vae.export import one_per_class

    firsts = one_per_class(dm.dataset("val"))  # (8, 1, 64, 64), the first of each class
    top = (to_unit(firsts[:, 0]) * 255).round().numpy().astype(np.uint8)
    bottom = (to_unit(vae.decode(vae.encode(firsts, sample=False))[:, 0]) * 255).round()
    for i in range(8):
        np.testing.assert_array_equal(png[:64, 66 * i : 66 * i + 64], top[i])
        diff = np.abs(png[66:130, 66 * i : 66 * i + 64].astype(int) - bottom[i].numpy())
        assert diff.max() <= 1
        # the difference row: |original - reconstruction| x 4 of full scale, black = equal
        want = np.clip(np.abs(top[i].astype(int) - bottom[i].numpy()) * 4, 0, 255)
        assert np.abs(png[132:, 66 * i : 66 * i + 64].astype(int) - want).max() <= 5


@pytest.mark.slow
def test_trained_vae_round_trip_beats_the_mean_image(trained_export):
    out, dm = trained_export
    train = torch.stack([x for x, _ in dm.dataset("train")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatentStatsWarning)  # our export carries its stats
        vae = FrozenVAE.load(
            out, 1, train_batches=_batches(train), data_fingerprint=dm.fingerprint()
        )
    assert vae.stats.n_latents == load_latent_stats(out / "latent_stats.json").n_latents
    test = torch.stack([x for x, _ in dm.dataset("test")])  # held out: other seeds
    xr = vae.decode(vae.encode(test, sample=False))
    psnr = float(peak_signal_noise_ratio(to_unit(xr), to_unit(test), data_range=1.0))
    mean_img = train.mean(0, keepdim=True).expand_as(test)
    psnr_mean = float(peak_signal_noise_ratio(to_unit(mean_img), to_unit(test), data_range=1.0))
    assert psnr > psnr_mean + 2.0, (psnr, psnr_mean)
    # (z - shift) * scale of the training latents: unit std per channel within 10 %
    z = vae.encode(train)  # posterior samples, (N, 4, 16, 16)
    std = z.transpose(0, 1).reshape(4, -1).std(dim=1)
    assert ((std - 1).abs() < 0.1).all(), std


@pytest.mark.slow
def test_stats_of_other_weights_are_recomputed(trained_export, tmp_path):
    out, dm = trained_export
    copy = tmp_path / "vae_copy"
    copy.mkdir()
    for f in out.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    stale = json.loads((copy / "latent_stats.json").read_text())
    stale["vae_hash"] = "0" * 16
    stale["scale"] = [123.0] * 4
    (copy / "latent_stats.json").write_text(json.dumps(stale))
    train = torch.stack([x for x, _ in dm.dataset("train")])
    vae = FrozenVAE.load(
        copy,
        1,
        train_batches=_batches(train),
        data_fingerprint=dm.fingerprint(),
        min_latents=128,
        cache_dir=tmp_path / "cache",
    )
    assert vae.stats.vae_hash == vae.weights_hash != "0" * 16
    assert all(abs(s - 123.0) > 1 for s in vae.stats.scale)
    assert (
        json.loads((copy / "latent_stats.json").read_text())["scale"] == [123.0] * 4
    )  # user's file untouched
    # the same weights, stats measured on other data (another fingerprint): measured again
    other = json.loads((out / "latent_stats.json").read_text())
    from latent_diffusion.vae.stats import data_hash

    other["data_fingerprint"] = {**other["data_fingerprint"], "counts": {"train": 9999}}
    other["data_hash"] = data_hash(other["data_fingerprint"])
    other["scale"] = [123.0] * 4
    (copy / "latent_stats.json").write_text(json.dumps(other))
    again = FrozenVAE.load(
        copy,
        1,
        train_batches=_batches(train),
        data_fingerprint=dm.fingerprint(),
        min_latents=128,
        cache_dir=tmp_path / "cache2",
    )
    assert again.stats.data_fingerprint == dm.fingerprint()
    assert all(abs(s - 123.0) > 1 for s in again.stats.scale)
