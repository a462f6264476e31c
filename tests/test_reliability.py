"""Reliability: kill-and-resume, pre-emption signals, safe loading, shared caches.

The end-to-end tests run `python -m latent_diffusion.train` as a user would and
kill it for real (SIGKILL, SIGTERM). Their runs use 32-image batches on the 64
images of `debug=fast`, so an epoch is 2 steps and every checkpoint (every 2
steps) falls on an epoch boundary: the case in which a resumed run is bit-exact
(docs/reliability.md says why a mid-epoch resume is not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from cli import run_cli

from latent_diffusion.lit.checkpoint_io import (
    AtomicCheckpointIO,
    collect_rng_states,
    set_rng_states,
)
from latent_diffusion.lit.safe_load import check_signature, load_checkpoint
from latent_diffusion.utils.errors import UserError

FAST = (
    "model=tiny",
    "debug=fast",
    "logger=csv",
    "data.batch_size=32",
    "~callbacks.sample_grid",
    "trainer.max_steps=8",
)
ENV = {
    **os.environ,
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
}


def _start_train(workdir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "latent_diffusion.train", *FAST, *overrides],
        cwd=workdir,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended (rc {proc.returncode}) before {path} appeared:\n"
                f"{proc.stdout.read()[-4000:]}"
            )
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def _ckpt(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


def _assert_same_weights(a: dict, b: dict) -> None:
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"
    assert any(k.startswith("ema.") for k in sa)  # the EMA shadow is compared too
    for sa_, sb_ in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(sa_["exp_avg"], sb_["exp_avg"]) and torch.equal(
            sa_["exp_avg_sq"], sb_["exp_avg_sq"]
        )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """This module's own folder (not the session's shared one), so that its first two runs
    start with no VAE and meet at the VAE's file lock."""
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def runs(workdir):
    """Two runs of the same 8 steps, side by side: 'whole' uninterrupted (the reference),
    'killed' SIGKILLed as soon as its first last.ckpt exists (no handler, no cleanup: as a
    node failure). Both start with no VAE: they wait on its file lock; one trains it."""
    whole = _start_train(workdir, "run_name=whole")
    killed = _start_train(workdir, "run_name=killed")
    _wait_for(workdir / "outputs" / "train" / "killed" / "checkpoints" / "last.ckpt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_out = killed.stdout.read()
    out, _ = whole.communicate(timeout=900)
    assert whole.returncode == 0, out[-4000:]
    # the VAE built once under its lock, by one of the two; the other waited and loaded it
    assert [("training one first" in o) for o in (out, killed_out)].count(True) == 1
    assert len(list((workdir / ".cache" / "latent_diffusion" / "vae").glob("*/config.json"))) == 1
    return {
        "whole": workdir / "outputs" / "train" / "whole",
        "killed": workdir / "outputs" / "train" / "killed",
        "killed_rc": killed.returncode,
    }


@pytest.fixture(scope="module")
def whole_run(runs):
    return runs["whole"]


# ------------------------------------------------------------------ SIGKILL
@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(runs, workdir):
    run = runs["killed"]
    assert runs["killed_rc"] == -signal.SIGKILL
    step = _ckpt(run)["global_step"]
    assert step in (2, 4, 6), step  # killed mid-run, last.ckpt whole
    assert not (run / "export").exists()  # no half run exported
    # A save the kill cut short (simulated: a truncated copy under the writer's temporary
    # name, what AtomicCheckpointIO leaves if killed mid-write) is never read, then removed.
    stale = run / "checkpoints" / ".last.ckpt.killed.tmp"
    stale.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    proc = run_cli("train", *FAST, "run_name=killed", "ckpt_path=last", cwd=workdir, env=ENV)
    log = proc.stdout + proc.stderr
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in log
    assert "a checkpoint save that never finished" in log and not stale.exists()
    resumed, whole = _ckpt(run), _ckpt(runs["whole"])
    assert resumed["global_step"] == whole["global_step"] == 8
    _assert_same_weights(resumed, whole)  # bit-exact: model, EMA, Adam moments


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path):
    """Real SIGKILL while AtomicCheckpointIO writes (a child saving 40 MB checkpoints in a loop,
    killed once its temporary file exists): the target is always a complete checkpoint."""
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.full((10,), -1.0)}, "global_step": -1}, target
    )
    script = textwrap.dedent(f"""
        import torch
        from latent_diffusion.lit.checkpoint_io import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        for i in range(10_000):
            io.save_checkpoint({{"state_dict": {{"w": torch.full((10_000_000,), float(i))}},
                                "global_step": i}}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    t0 = time.time()
    while not list(tmp_path.glob(".last.ckpt.*.tmp")):
        assert proc.poll() is None and time.time() - t0 < 120, "the writer never started a save"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".last.ckpt.*.tmp"))
    ck = load_checkpoint(target)  # whole, whichever save it is
    w = ck["state_dict"]["w"]
    assert torch.all(w == w[0]) and float(w[0]) == ck["global_step"]
    assert len(left) == 1  # the kill landed mid-write: the cut-short save stays under its temp name


# ------------------------------------------------------------------ SIGTERM / SIGUSR1 / SIGUSR2
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@pytest.mark.slow
def test_sigterm_sigusr1_sigusr2_save_last_ckpt_exit_128_plus_signal_and_resume(whole_run, workdir):
    """SIGTERM (SLURM / Kubernetes before a kill), SIGUSR1 (a scheduler's warning outside
    SLURM) and SIGUSR2 (submitit's), each sent to its own real `train` process, side by side."""
    run = workdir / "outputs" / "train" / "preempted"
    procs = [(_start_train(workdir, "run_name=preempted", "trainer.max_steps=400"), run)]
    for name in ("usr1", "usr2"):
        procs.append(
            (
                _start_train(workdir, f"run_name={name}", "trainer.max_steps=400"),
                workdir / "outputs" / "train" / name,
            )
        )
    # SIGUSR2 is submitit's warning; with no submitit handler to hand over to, it stops as
    # the others do (140)
    cases = [(p, r, sig) for (p, r), sig in zip(procs, SIGNALS, strict=True)]
    for p, r, sig in cases:
        _wait_for(r / "checkpoints" / "last.ckpt", p)
        p.send_signal(sig)
    for p, r, sig in cases:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 128 + sig, out[-3000:]  # 143, 138, 140
        assert f"stopped by signal {int(sig)}" in out and "ckpt_path=last" in out
        assert 2 <= _ckpt(r)["global_step"] < 400
        assert not (r / "export").exists()
    step = _ckpt(run)["global_step"]
    run_cli(
        "train",
        *FAST,
        "run_name=preempted",
        f"trainer.max_steps={step + 3}",  # odd: not a multiple of the checkpoint interval (2)
        "ckpt_path=last",
        cwd=workdir,
        env=ENV,
    )
    after = _ckpt(run)  # last.ckpt is the final step's, not the last interval's
    assert after["global_step"] == step + 3
    assert {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()} == {
        step + 3.0
    }
    assert (run / "export" / "export.json").is_file()


def _spawned_ranks(launcher_pid: int) -> list[int]:
    """PIDs of the ranks trainer=ddp_sim spawned (children running multiprocessing's spawn_main;
    the resource tracker is another child)."""
    ranks = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and b"spawn_main" in cmd:
            ranks.append(int(d))
    return sorted(ranks)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the spawned ranks through /proc")
def test_ddp_sim_ranks_stop_together_on_one_ranks_signal_or_the_launchers(whole_run, workdir):
    """trainer=ddp_sim (two spawned gloo ranks). SIGUSR1 to one rank only: both ranks agree at
    the end of the step, save last.ckpt, and the launcher exits 138 (it used to wait for ever
    on a rank that ended without handing back its results). SIGTERM to the launcher only
    (Kubernetes signals PID 1): passed on to its ranks, exit 143 (it used to die at once and
    its ranks without a checkpoint). The first run then resumes and exports."""
    ddp = ("trainer=ddp_sim", "data.batch_size=8", "trainer.max_steps=400")
    runs = {name: workdir / "outputs" / "train" / name for name in ("ddp-usr1", "ddp-term")}
    procs = {name: _start_train(workdir, f"run_name={name}", *ddp) for name in runs}
    for name, p in procs.items():
        _wait_for(runs[name] / "checkpoints" / "last.ckpt", p)
    ranks = _spawned_ranks(procs["ddp-usr1"].pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGUSR1)
    procs["ddp-term"].send_signal(signal.SIGTERM)
    for (name, p), sig in zip(procs.items(), (signal.SIGUSR1, signal.SIGTERM), strict=True):
        try:
            out, _ = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"{name}: the launcher hung after {sig!r}") from None
        assert p.returncode == 128 + sig, out[-3000:]
        assert f"stopped by signal {int(sig)} at step" in out, out[-3000:]
        assert "Traceback" not in out
        assert 2 <= _ckpt(runs[name])["global_step"] < 400
        assert not (runs[name] / "export").exists()
    step = _ckpt(runs["ddp-usr1"])["global_step"]
    run_cli(
        "train",
        *FAST,
        "run_name=ddp-usr1",
        *ddp[:2],
        f"trainer.max_steps={step + 1}",
        "ckpt_path=last",
        cwd=workdir,
        env=ENV,
    )
    assert _ckpt(runs["ddp-usr1"])["global_step"] == step + 1
    assert (runs["ddp-usr1"] / "export" / "export.json").is_file()


# ------------------------------------------------------------------ refusing checkpoints
class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _malicious_ckpt(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "x": _Payload(marker)}, path)
    return path


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    evil = _malicious_ckpt(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UserError, match=r"refusing to load .*evil\.ckpt.*arbitrary unpickling"):
        load_checkpoint(evil)
    with pytest.raises(UserError, match="refusing"):
        # what Trainer.fit(ckpt_path=...) calls through train.py's plugin, before anything else
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()
    # the control: the payload is live, an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "ran"


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_model_config(whole_run, workdir):
    ckpt = whole_run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    proc = run_cli(
        "train",
        *FAST,
        "run_name=whole",
        "ckpt_path=last",
        "model.base_channels=64",
        "diffusion.timesteps=500",
        cwd=workdir,
        env=ENV,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    msg = proc.stderr
    assert f"checkpoint {ckpt} was trained with a different config" in msg
    assert "model.base_channels: 32 (checkpoint) vs 64 (this run)" in msg
    assert "diffusion.timesteps: 1000 (checkpoint) vs 500 (this run)" in msg
    assert ckpt.read_bytes() == before  # nothing the user owns was touched


def test_signature_check_spells_out_class_list_and_latent_shape(tmp_path):
    saved = {
        "class_names": ["walk", "run"],
        "latent_shape": [4, 16, 16],
        "model": {"base_channels": 32},
        "diffusion": {"timesteps": 1000},
        "vae_weights_hash": "aaaa",
    }
    now = {
        **saved,
        "class_names": ["walk", "fall"],
        "latent_shape": [4, 32, 32],
        "vae_weights_hash": "bbbb",
    }
    with pytest.raises(UserError) as err:
        check_signature({"run_signature": saved, "state_dict": {}}, now, tmp_path / "x.ckpt")
    msg = str(err.value)
    assert "class_names: ['walk', 'run'] (checkpoint) vs ['walk', 'fall'] (this run)" in msg
    assert "latent_shape: [4, 16, 16] (checkpoint) vs [4, 32, 32] (this run)" in msg
    assert "vae_weights_hash: 'aaaa' (checkpoint) vs 'bbbb' (this run)" in msg
    check_signature(
        {"run_signature": saved, "state_dict": {}}, dict(saved), tmp_path / "x.ckpt"
    )  # same: fine
    # a checkpoint from before signatures: its hparams still tell class list and latent shape
    old = {
        "state_dict": {},
        "hyper_parameters": {"class_names": ["walk"], "latent_shape": [4, 16, 16]},
    }
    with pytest.raises(UserError, match=r"class_names: \['walk'\] \(checkpoint\)"):
        check_signature(old, saved, tmp_path / "old.ckpt")


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        UserError, match=rf"{cut} is not a readable checkpoint \(truncated or corrupt"
    ):
        load_checkpoint(cut)
    with pytest.raises(UserError, match=rf"checkpoint {tmp_path / 'nope.ckpt'} does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    assert not list(tmp_path.glob("*.tmp"))  # the writer left no temporary behind


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {}, "rng_states": collect_rng_states()}, tmp_path / "r.ckpt"
    )
    expect = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(load_checkpoint(tmp_path / "r.ckpt")["rng_states"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
    )


# ------------------------------------------------------------------ non-finite losses
@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["cpu", "ddp_sim"])
def test_cli_non_finite_losses_skip_then_stop_keeping_a_finite_checkpoint(
    whole_run, workdir, trainer
):
    """A learning rate of 1e30 blows the weights up after one step; every later loss is NaN.
    Under ddp_sim the ranks skip together (Lightning refuses a skipped training_step under
    DDP: the step runs its backward and drops the gradients) and the spawned rank's error
    reaches the user as the same one line."""
    run = workdir / "outputs" / "train" / f"nan-{trainer}"
    proc = run_cli(
        "train",
        *FAST,
        f"run_name=nan-{trainer}",
        f"trainer={trainer}",
        "optimizer.lr=1e30",
        "warmup_steps=1",
        "max_bad_steps=3",
        "trainer.gradient_clip_val=null",
        "trainer.val_check_interval=1",
        cwd=workdir,
        env=ENV,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: 4 non-finite losses in a row" in proc.stderr and "max_bad_steps=3" in proc.stderr
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("train/skipped_steps")
    skipped = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert skipped and max(skipped) >= 3  # counted and logged
    ck = _ckpt(run)
    # the last step that finished with a finite loss; its count of skipped steps travels with it
    assert ck["global_step"] >= 1 and 0 <= ck["skipped_steps"] <= max(skipped)
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (run / "export").exists()


# ------------------------------------------------------------------ shared caches
_CACHE_SCRIPT = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
from diffusers import AutoencoderKL
from torch.utils.data import TensorDataset
from latent_diffusion.data.latent_cache import build_latent_cache
from latent_diffusion.vae.interface import FrozenVAE
from latent_diffusion.vae.stats import fallback_stats
torch.manual_seed(0)
model = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8), latent_channels=4,
                      norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2)
vae = FrozenVAE(model, fallback_stats(1.0, 0.0, 4, "tinyvae"), 1, "tinyvae")
g = torch.Generator().manual_seed(1)
ds = TensorDataset(torch.rand(96, 1, 32, 32, generator=g) * 2 - 1, torch.arange(96) % 3)
print("ready", file=sys.stderr, flush=True)
out = build_latent_cache(vae, ds, {"data": "test"}, "train", sys.argv[1])
torch.save({"mean": out.mean.clone(), "std": out.std.clone()}, sys.argv[2])
"""


@pytest.mark.slow
def test_two_processes_sharing_a_latent_cache_build_it_once(tmp_path):
    """The test holds the cache's lock until both processes are at it, so they do overlap
    (without the hold, two processes that happen not to overlap would also pass)."""
    from filelock import FileLock

    from latent_diffusion.utils.io import stable_hash

    cache = tmp_path / "cache"
    cache.mkdir()
    key = stable_hash({"vae": "tinyvae", "data": {"data": "test"}, "split": "train"})
    hold = FileLock(str(cache / f"train-{key}.safetensors") + ".lock")
    hold.acquire()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CACHE_SCRIPT, str(cache), str(tmp_path / f"out{i}.pt")],
            env={**ENV, "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for p in procs:  # each reaches build_latent_cache, then blocks on the lock held here
            assert p.stderr.readline().strip() == "ready"
        time.sleep(1.0)
        assert [p.poll() for p in procs] == [None, None]  # both waiting on the lock
        assert not list(cache.glob("train-*.safetensors"))
    finally:
        hold.release()
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("encoding the train split" in log for log in logs) == 1, logs  # built once
    files = list(cache.glob("train-*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    a, b = (torch.load(tmp_path / f"out{i}.pt", weights_only=True) for i in range(2))
    assert torch.equal(a["mean"], b["mean"]) and torch.equal(a["std"], b["std"])
    assert a["mean"].shape == (96, 4, 16, 16)
    from safetensors.torch import load_file

    assert torch.equal(load_file(files[0])["y"], torch.arange(96) % 3)  # a valid, whole cache


# ------------------------------------------------------------------ SLURM / submitit requeue
def test_sigusr2_saves_last_ckpt_then_hands_over_to_submitits_handler(tmp_path):
    """submitit warns with SIGUSR2 before the time limit and requeues in its own handler
    (which exits). ResumeState must save last.ckpt of the current step FIRST, then call it."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from latent_diffusion.lit.checkpoint_io import AtomicCheckpointIO, ResumeState

    ckpt_dir = tmp_path / "checkpoints"
    seen = []

    def submitit_handler(signum, frame):  # stands in for submitit's requeue-and-exit
        seen.append((signum, (ckpt_dir / "last.ckpt").is_file()))

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            if self.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            ds = torch.utils.data.TensorDataset(torch.randn(64, 2))
            return torch.utils.data.DataLoader(ds, batch_size=4)

    old = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        trainer = L.Trainer(
            max_steps=50,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=100),
                ResumeState(),
            ],
            plugins=[AtomicCheckpointIO()],
        )
        with pytest.raises(SIGTERMException):
            trainer.fit(Tiny())
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored at teardown
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert seen == [(signal.SIGUSR2, True)]  # called once, after last.ckpt was written
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_requeued_slurm_job_resumes_without_ckpt_path(tmp_path, monkeypatch):
    from latent_diffusion.train import resolve_ckpt_path

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resolve_ckpt_path(None, tmp_path) is None  # a first start stays fresh
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_ckpt_path(None, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
