"""Mid-epoch exact resume: a run stopped at any step inside an epoch and resumed with
ckpt_path=last ends with the weights, EMA and Adam moments of an uninterrupted run.

In-process runs of `train.build` (the CLI's own builder) on a tiny model: the 64 training
images of debug=fast in batches of 12 give 5 steps per epoch, so a stop at a step that is
not a multiple of 5 lands inside epoch 0 or 1, and validation (every 2 steps) runs in
between. One test kills a real `train` process with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from latent_diffusion.lit.safe_load import load_checkpoint
from latent_diffusion.train import build, resolve_ckpt_path

CONF = Path(__file__).resolve().parents[1] / "conf"
STEPS = 7
EPOCH = 5  # steps per epoch
COMMON = [
    "model=tiny",
    "debug=fast",
    "logger=csv",
    "~callbacks.sample_grid",
    "~callbacks.weight_digest",
    "data.batch_size=12",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    # a small VAE, trained once for the module (10 steps)
    "vae.module.autoencoder.block_out_channels=[8,16,16]",
    "vae.module.autoencoder.norm_num_groups=8",
]
PATHS = {
    "dataloader": ["data.latents=online"],
    "latents_on_device": ["data.latents=cached", "data.latents_on_device=true"],
}


def _cfg(root: Path, run: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*COMMON, *overrides])
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / "outputs" / run)
        cfg.export_dir = str(root / "outputs" / run / "export")
    return cfg


def _fit(root: Path, run: str, max_steps: int, overrides: list[str], resume: bool = False) -> dict:
    cfg = _cfg(root, run, [f"trainer.max_steps={max_steps}", *overrides])
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    dm, module, trainer = build(cfg)
    ckpt = resolve_ckpt_path("last" if resume else None, cfg.paths.output_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")


def _assert_same(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    sa, sb = a["state_dict"], b["state_dict"]
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"
    assert any(k.startswith("ema.") for k in sa)
    for x, y in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(
            x["exp_avg_sq"], y["exp_avg_sq"]
        )


def _position(ckpt: dict) -> dict:
    return ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("midepoch")


@pytest.fixture(scope="module")
def whole_runs(root):
    """The uninterrupted 7-step run of each data path, trained once for the module."""
    runs = {path: _fit(root, f"{path}-whole", STEPS, PATHS[path]) for path in sorted(PATHS)}
    for ckpt in runs.values():
        assert _position(ckpt) == {"epoch": 1, "index": 2 * 12}
    return runs


# The stops that once broke: 1, before the first periodic checkpoint (Lightning's own
# last.ckpt at train end overwrote the one saved inside the epoch); 3, after a validation;
# 6, inside the second epoch (the global RNG, which the label drop uses, had moved).
@pytest.mark.slow
@pytest.mark.parametrize("stop", [1, 3, 6])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_stop_at_a_mid_epoch_step_then_resume_is_bit_exact(root, whole_runs, path, stop):
    part = _fit(root, f"{path}-part{stop}", stop, PATHS[path])
    assert part["global_step"] == stop
    assert _position(part) == {"epoch": stop // EPOCH, "index": (stop % EPOCH) * 12}, stop
    _assert_same(
        _fit(root, f"{path}-part{stop}", STEPS, PATHS[path], resume=True), whole_runs[path]
    )


def _train_args(root: Path, run: Path, steps: int, extra: list[str], digest=False) -> list[str]:
    common = [c for c in COMMON if not (digest and c == "~callbacks.weight_digest")]
    return [
        sys.executable,
        "-m",
        "latent_diffusion.train",
        *common,
        *PATHS["dataloader"],
        *extra,
        f"trainer.max_steps={steps}",
        f"paths.root_dir={root}",
        f"hydra.run.dir={run}",
        f"export_dir={run / 'export'}",
    ]


# the same intra-op thread count as the in-process run: a CPU conv sums in another order
# with another count, and the weights would differ in the last bits
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "WANDB_MODE": "offline"}


def _kill_then_resume(root: Path, run: Path, args: list[str], step: int) -> dict:
    """Start `train`, SIGKILL its whole process group (ddp_sim's spawned ranks too) once
    last.ckpt holds step >= `step`, resume with ckpt_path=last; -> the final last.ckpt."""
    proc = subprocess.Popen(
        args,
        cwd=root,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    last, t0 = run / "checkpoints" / "last.ckpt", time.time()
    while True:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        if last.exists() and load_checkpoint(last)["global_step"] >= step:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = load_checkpoint(last)
    out = subprocess.run(
        [*args, "ckpt_path=last"], cwd=root, env=ENV, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dataloader is not resumable" not in out.stdout + out.stderr
    assert f"resuming from {last}" in out.stdout + out.stderr
    return {"killed": killed, "final": load_checkpoint(last)}


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_ckpt_path_last_is_bit_exact(root, whole_runs):
    """The real thing: a `train` process killed (SIGKILL, no handler runs) once its checkpoint of
    a random step exists, resumed by the CLI with ckpt_path=last, equals the in-process whole
    run."""
    # at least two steps (and a validation) before the end, so that the kill lands before the
    # run finishes even when a loaded machine slows the polling
    step = random.Random().randrange(1, STEPS - 2)
    run = root / "outputs" / "killed"
    got = _kill_then_resume(root, run, _train_args(root, run, STEPS, []), step)
    assert got["killed"]["global_step"] < STEPS
    _assert_same(got["final"], whole_runs["dataloader"])  # the VAE cache is shared


@pytest.mark.slow
def test_sigkill_under_ddp_sim_mid_epoch_then_resume_is_bit_exact(root, whole_runs):
    """Two ranks (trainer=ddp_sim, gloo): 64 images in batches of 8 per rank give 4 steps per
    epoch, so the checkpoint of step 2 lies inside epoch 0; killed there and resumed, the run
    ends as an uninterrupted two-rank run does. The uninterrupted run also shows that the two
    ranks trained and ended with the same weights (their weight digests)."""
    ddp, steps = ["trainer=ddp_sim", "data.batch_size=8"], 5
    whole = root / "outputs" / "ddp-whole"
    out = subprocess.run(
        _train_args(root, whole, steps, ddp, digest=True),
        cwd=root,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    digest = json.loads((whole / "weight_digest.json").read_text())
    assert set(digest) == {"0", "1"} and digest["0"] == digest["1"]
    run = root / "outputs" / "ddp-killed"
    got = _kill_then_resume(root, run, _train_args(root, run, steps, ddp), 2)
    assert got["killed"]["global_step"] == 2
    assert _position(got["killed"]) == {"epoch": 0, "index": 2 * 8}  # mid-epoch, per rank
    _assert_same(got["final"], load_checkpoint(whole / "checkpoints" / "last.ckpt"))


@pytest.mark.parametrize("world", [1, 2])
def test_a_restored_position_continues_each_ranks_order(world):
    """Both paths (ResumableDataLoader, OnDeviceBatches) on every rank of a ddp_sim-like
    world: restoring (epoch, index) yields exactly the rest of that epoch's batches, and
    the next epoch in full; the recorded index counts finished steps, not prefetched ones."""
    from torch.utils.data import TensorDataset

    from latent_diffusion.data.device_batches import OnDeviceBatches
    from latent_diffusion.data.resumable_sampler import ResumableDataLoader, ResumableSampler

    n, batch = 37, 4
    y = torch.arange(n)

    def loaders(rank):
        dl = ResumableDataLoader(
            TensorDataset(y),
            batch_size=batch,
            drop_last=True,
            sampler=ResumableSampler(range(n), rank=rank, world_size=world, seed=7),
        )
        dev = OnDeviceBatches({"y": y}, batch, drop_last=True, rank=rank, world_size=world, seed=7)
        return [(dl, lambda b: b[0]), (dev, lambda b: b["y"])]

    for rank in range(world):
        for (whole, get), (resumed, get2) in zip(loaders(rank), loaders(rank), strict=True):
            whole.sampler.set_epoch(3)
            full = [get(b) for b in whole]
            whole.sampler.progress = lambda: 2 * batch  # two steps finished
            state = whole.state_dict()
            assert state == {"epoch": 3, "index": 8}
            resumed.load_state_dict(state)  # a fresh loader in the resumed process
            rest = [get2(b) for b in resumed]
            assert len(rest) == len(full) - 2
            assert all(torch.equal(a, b) for a, b in zip(rest, full[2:], strict=True))
            resumed.sampler.set_epoch(4)
            whole.sampler.set_epoch(4)
            assert all(torch.equal(get(a), get2(b)) for a, b in zip(whole, resumed, strict=True))
