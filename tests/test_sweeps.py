"""Sweeps: local multirun through the real CLI, the SLURM launcher and the Optuna search.

The launcher and search configs are composed and turned into what the plugins
make of them (the sbatch script submitit would submit, Optuna's distributions)
without a cluster; the multirun and the Optuna study run for real on tiny jobs.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from cli import run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ("model=tiny", "debug=fast", "trainer.max_steps=2")  # one validation, one sample grid


def _compose(*overrides, hydra_cfg=True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="train", overrides=list(overrides), return_hydra_config=hydra_cfg
        )


def _last_val_loss(job: Path) -> float:
    with open(job / "csv" / "metrics.csv") as f:
        vals = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    return vals[-1]


# ------------------------------------------------------------------ local multirun (-m)


@pytest.mark.slow
def test_two_job_ddp_sweep_gives_each_job_its_own_dir_export_and_wandb_run(workdir):
    # with wandb's own defaults (no WANDB_MODE, stdin closed): offline, never a login prompt
    run_cli(
        "train",
        "-m",
        *FAST,
        "logger=[csv,wandb]",
        "run_name=lr_sweep",
        "optimizer.lr=1e-3,3e-3",
        "trainer=ddp_sim",  # each job two gloo ranks: spawned ranks must not replay the sweep
        cwd=workdir,
        drop_env=("WANDB_MODE", "WANDB_SILENT", "WANDB_API_KEY"),
    )
    sweep = workdir / "outputs" / "train" / "multirun" / "lr_sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    # one folder per job, <job number>_<its overrides>, although run_name is fixed
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    assert "optimizer.lr=0.001" in jobs[0].name and "optimizer.lr=0.003" in jobs[1].name
    lrs = []
    for job in jobs:
        export = job / "export"
        assert (export / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
        lrs.append(OmegaConf.load(export / "config.yaml").optimizer.lr)
        assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert lrs == [1e-3, 3e-3]  # each export carries its own job's config
    # each job logged to its own offline wandb run, in its own folder
    runs = [list((job / "wandb").glob("offline-run-*")) for job in jobs]
    assert [len(r) for r in runs] == [1, 1] and runs[0][0].name != runs[1][0].name
    # ... under its own display name: train/<run_name>/<job folder> (the .wandb record holds it)
    for job, (run,) in zip(jobs, runs, strict=True):
        record = b"".join(f.read_bytes() for f in run.glob("*.wandb"))
        assert f"train/lr_sweep/{job.name}".encode() in record


@pytest.mark.slow
def test_optuna_study_minimises_the_returned_validation_loss(workdir):
    """Two trials through the real CLI: the best value Optuna reports is the lower of the
    two jobs' final val/loss (what train.py's main returns)."""
    import optuna

    db = f"sqlite:///{workdir / 'optuna.db'}"
    run_cli(
        "train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *FAST,
        "logger=csv",
        "run_name=opt",
        f"hydra.sweeper.storage={db}",
        cwd=workdir,
    )
    sweep = workdir / "outputs" / "train" / "multirun" / "opt"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    losses = [_last_val_loss(j) for j in jobs]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(losses), rel=1e-6)
    assert set(result["best_params"]) == {"optimizer.lr", "model.p_uncond", "model.base_channels"}
    # the sampled values reached the jobs' configs
    best = jobs[losses.index(min(losses))]
    cfg = OmegaConf.load(best / ".hydra" / "config.yaml")
    assert cfg.optimizer.lr == pytest.approx(result["best_params"]["optimizer.lr"])
    assert cfg.model.base_channels == result["best_params"]["model.base_channels"]
    # the study outlives the sweep in its storage (to be continued by the next sweep)
    study = optuna.load_study(study_name="train_opt", storage=db)
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(losses), rel=1e-6)


# ------------------------------------------------------------------ SLURM (submitit), no cluster


def test_slurm_launcher_resolves_ranks_from_the_trainer(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = _compose(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"paths.root_dir={tmp_path}",
        "run_name=big",
    )
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher_cfg.tasks_per_node == cfg.trainer.devices == launcher_cfg.gpus_per_node == 4
    assert launcher_cfg.nodes == cfg.trainer.num_nodes == 2
    assert launcher_cfg.max_num_timeout > 0  # requeue on timeout
    launcher = instantiate(launcher_cfg)
    # what the launcher hands submitit (its own parameter translation, launch() in the plugin),
    # down to the sbatch script; `srun` only has to exist for submitit's cluster check
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m latent_diffusion.train", "u")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--time=1440",
        f"--signal=USR2@{launcher_cfg.signal_delay_s}",
    ):
        assert f"#SBATCH {line}\n" in sbatch, line
    # submitit's logs sit inside the sweep folder, next to the jobs they belong to
    assert f"{tmp_path}/outputs/train/multirun/big/.submitit/" in sbatch
    assert executor._executor.max_num_timeout == 20


def test_trainer_keeps_lightnings_slurm_environment(monkeypatch):
    """No `plugins` entry replaces the cluster environment: under SLURM Lightning takes the
    rank layout from SLURM and keeps auto-requeue on."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key in ("ddp", "gpu", "cpu", "ddp_sim"):
        assert "plugins" not in _compose(f"trainer={key}", hydra_cfg=False).trainer
    for k, v in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(k, v)
    cfg = _compose("trainer=cpu", hydra_cfg=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue


# ------------------------------------------------------------------ Optuna search space


def test_optuna_search_space_and_direction():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import (
        CategoricalDistribution,
        LogUniformDistribution,
        UniformDistribution,
    )

    cfg = _compose("hparams_search=optuna", "run_name=study")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == "minimize" and sweeper.study_name == "train_study"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    # the sweeper's own parser turns the params into Optuna distributions
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    lr = space["optimizer.lr"]
    assert isinstance(lr, LogUniformDistribution) and lr.low < cfg.optimizer.lr < lr.high
    p = space["model.p_uncond"]
    assert isinstance(p, UniformDistribution) and 0 < p.low < p.high < 1  # guidance stays trainable
    width = space["model.base_channels"]
    assert isinstance(width, CategoricalDistribution)
    # every width suits the searched models: heads = width // head_dim at each attention level
    for model in ("tiny", "small"):
        m = _compose(f"model={model}", hydra_cfg=False).model
        attn = [
            mult for i, mult in enumerate(m.channel_mult) if 16 // 2**i in m.attention_resolutions
        ]
        for w in width.choices:
            assert attn and all(w * mult % m.head_dim == 0 for mult in attn), (model, w)


@pytest.mark.parametrize("choice", [32, 128])
def test_optuna_widths_build_and_run(choice):
    cfg = _compose("model=tiny", f"model.base_channels={choice}", hydra_cfg=False)
    net = instantiate(cfg.model, in_channels=4, sample_size=16, num_classes=8, learn_sigma=True)
    with torch.no_grad():
        out = net(torch.randn(2, 4, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 7]))
    assert out.shape == (2, 8, 16, 16)
