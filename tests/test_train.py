"""The diffusion training stage end to end, through the real CLI on the simulator.

Every run here is `python -m latent_diffusion.train model=tiny debug=fast ...`
in one shared folder, so the simulated splits and the VAE are built once.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from cli import run_cli

pytestmark = pytest.mark.slow
FAST = ("model=tiny", "debug=fast", "logger=csv")


def _ckpt(run: Path) -> dict:
    # weights_only: a checkpoint must load without unpickling arbitrary objects
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def first_run(tmp_path_factory):
    """The fresh-machine path: no VAE artifact yet, so the VAE stage runs first. Its own
    folder: other test files share `workdir` and may have trained its VAE already."""
    fresh = tmp_path_factory.mktemp("fresh")
    proc = run_cli("train", *FAST, "run_name=first", cwd=fresh)
    return fresh / "outputs" / "train" / "first", proc.stdout + proc.stderr


def test_one_command_trains_the_vae_first_then_exports(first_run):
    from latent_diffusion.lit.export import load_export

    run, log = first_run
    assert "training one first" in log  # the VAE stage ran, once
    vaes = list((run.parents[2] / ".cache" / "latent_diffusion" / "vae").glob("f4-*/config.json"))
    assert len(vaes) == 1
    exp = load_export(run)
    assert exp.class_names == [
        "walk",
        "run",
        "jump",
        "fall",
        "sit_down",
        "stand_up",
        "pick_up",
        "box",
    ]
    assert exp.latent_shape == (4, 16, 16)
    z = torch.randn(2, 4, 16, 16)
    out = exp.denoiser(z, torch.tensor([10, 500]), torch.tensor([0, 3]))
    assert out.shape == (2, 8, 16, 16)  # learned variance: 2 x latent channels
    assert exp.vae.decode(z).shape == (2, 1, 64, 64)
    # the export holds the EMA weights, which differ from the raw weights after training
    ck = _ckpt(run)
    sd = ck["state_dict"]
    raw = sd["denoiser.unet.conv_in.weight"]
    ema = sd["ema.unet/conv_in/weight"]
    exported = exp.denoiser.unet.conv_in.weight
    torch.testing.assert_close(exported, ema)
    assert not torch.equal(exported, raw)


def test_checkpoint_holds_the_denoiser_and_ema_but_not_the_vae(first_run):
    run, _ = first_run
    ck = _ckpt(run)
    keys = list(ck["state_dict"])
    assert any(k.startswith("denoiser.") for k in keys)
    assert any(k.startswith("ema.") for k in keys)
    assert not any("vae" in k for k in keys), [k for k in keys if "vae" in k][:3]
    ref = ck["vae_reference"]
    assert len(ref["weights_hash"]) == 16 and len(ref["latent_stats"]["scale"]) == 4
    assert ck["global_step"] == 4


def test_bf16_mixed_on_cpu_runs_the_denoiser_in_bf16_and_the_vae_in_fp32(first_run, workdir):
    """In-process through the CLI's own builder, with forward hooks on the real modules: under
    trainer.precision=bf16-mixed the denoiser computes in bf16 and the frozen VAE in fp32 (a
    finite loss alone would hold in fp32 too)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from latent_diffusion.train import build

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*FAST, "trainer.precision=bf16-mixed", "~callbacks.sample_grid"],
        )
    with open_dict(cfg):
        cfg.paths.root_dir = str(workdir)
        cfg.paths.output_dir = str(workdir / "outputs" / "train" / "bf16")
        cfg.export_dir = str(workdir / "outputs" / "train" / "bf16" / "export")
    dm, module, trainer = build(cfg)
    seen = {"denoiser": set(), "vae": set()}
    module.denoiser.register_forward_hook(lambda m, i, o: seen["denoiser"].add(o.dtype))
    module.vae.model.encoder.register_forward_hook(lambda m, i, o: seen["vae"].add(o.dtype))
    trainer.fit(module, datamodule=dm)
    assert seen == {"denoiser": {torch.bfloat16}, "vae": {torch.float32}}, seen
    losses = [float(v) for k, v in trainer.logged_metrics.items() if k.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_wandb_offline_run_with_sample_images(first_run, workdir):
    run_cli("train", "model=tiny", "debug=fast", "logger=wandb", "run_name=wb", cwd=workdir)
    runs = list((workdir / "outputs" / "train" / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list(runs[0].glob("files/media/images/samples/*.png"))
    assert images, "the sample grid was not logged to wandb"


def test_cached_latents_are_built_once_and_reused(first_run):
    work = first_run[0].parents[2]  # the fresh folder: no other run has cached latents there
    run_cli("train", *FAST, "data.latents=cached", "run_name=cached1", cwd=work)
    cache = sorted((work / ".cache" / "latent_diffusion" / "latents").glob("train-*.safetensors"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    run_cli("train", *FAST, "data.latents=cached", "run_name=cached2", cwd=work)
    assert cache[0].stat().st_mtime_ns == stamp  # read, not rebuilt
    assert _ckpt(work / "outputs" / "train" / "cached2")["global_step"] == 4


@pytest.mark.slow
def test_quality_callback_logs_cas_and_domain_fid_during_training(workdir):
    """callbacks=quality in a real run: the domain classifier is trained at fit start (no cache
    yet), then eval/cas and eval/fid_domain reach the logger at the checked steps."""
    import csv

    run_cli(
        "train",
        *FAST,
        "run_name=quality",
        "callbacks=quality",
        "callbacks.domain_metrics.every_n_steps=2",
        "callbacks.domain_metrics.n_per_class=2",
        "callbacks.domain_metrics.steps=4",
        "callbacks.domain_metrics.classifier.steps=10",
        cwd=workdir,
    )
    rows = []
    for f in (workdir / "outputs" / "train" / "quality").rglob("metrics.csv"):
        rows += list(csv.DictReader(f.open()))
    checked = [r for r in rows if r.get("eval/cas")]
    assert sorted({int(r["step"]) for r in checked}) == [2, 4]
    for r in checked:
        assert 0.0 <= float(r["eval/cas"]) <= 1.0
        assert float(r["eval/fid_domain"]) >= 0 and float(r["eval/fid_real_vs_real"]) >= 0
