"""Checkpoints that survive SIGKILL, pre-emption and other people's files.

AtomicCheckpointIO  Lightning's checkpoint plugin, with two changes:
  - save: torch.save into a temporary file in the checkpoint's own folder,
    fsync, os.replace. Lightning's default goes through an fsspec transaction
    whose temporary file lives in /tmp and is *moved* (a copy across file
    systems), so a kill during that copy can leave a truncated last.ckpt.
  - load: weights_only=True and the run-signature check (safe_load.py), for
    resume (trainer.fit(ckpt_path=...)) and every other load through the Trainer.

ResumeState  a callback that makes a resumed run continue the same random
  streams and stop cleanly on a signal:
  - the RNG states (torch, CUDA, numpy, python) go into each checkpoint and are
    restored on resume, and validation runs under a saved/restored RNG state, so
    the training draws (timesteps, noise, label drop, VAE posterior samples,
    shuffling) do not depend on whether a validation ran in between;
  - SIGTERM (Lightning sets trainer.received_sigterm, also broadcast under DDP)
    and SIGUSR1 outside SLURM (SLURM's requeue signal is Lightning's own
    handler: it saves hpc_ckpt_<n>.ckpt in the run folder and requeues) save
    checkpoints/last.ckpt at the end of the current step; the run then stops
    and train.py exits with 128 + the signal number;
  - SIGUSR2 (submitit's warning before a SLURM time limit, hydra/launcher=slurm) does
    the same, then calls submitit's handler, which requeues the job; the requeued
    job resumes by itself (train.py: SLURM_RESTART_COUNT >= 1 means ckpt_path=last).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

from latent_diffusion.lit.safe_load import SIGNATURE_KEY, check_signature, load_checkpoint
from latent_diffusion.utils.io import atomic_writer

log = logging.getLogger(__name__)
RNG_KEY = "rng_states"
# a spawned rank's stop signal, handed to the launching process with the callback metrics
STOPPED_BY_KEY, STOPPED_AT_KEY = "stopped_by_signal", "stopped_at_step"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temporary file + fsync + rename on save; weights_only + signature check on load."""

    def __init__(self, expected_signature: dict | None = None):
        super().__init__()
        self.expected_signature = expected_signature

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options}"
            )
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # weights_only is always True here, whatever the caller asked for (module doc).
        # lightning=False: the spawn launcher passes rank 0's bare state_dict through this too
        ckpt = load_checkpoint(path, map_location=map_location or "cpu", lightning=False)
        check_signature(ckpt, self.expected_signature, path)
        return ckpt


# ------------------------------------------------------------------ RNG states
def collect_rng_states() -> dict:
    """Every global RNG a training step draws from, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------ spawned ranks
@contextlib.contextmanager
def forward_signals_to_ranks(trainer):
    """While fit runs, pass SIGTERM / SIGUSR1 / SIGUSR2 sent to the launching process on to
    the ranks it spawned (trainer=ddp_sim), as torchrun does for its workers; each rank's
    ResumeState then stops at the end of the step. Without this a SIGTERM to the launcher
    kills it, and its ranks die of the parent-death signal without a checkpoint. A no-op
    for launchers that are a rank themselves (single process, ddp, torchrun)."""
    launcher = trainer.strategy.launcher
    if (
        not isinstance(launcher, _MultiProcessingLauncher)
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def forward(signum, frame) -> None:
        log.info("received signal %d: passing it on to the ranks", signum)
        if getattr(launcher, "procs", None):
            launcher.kill(signum)

    signums = [getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n)]
    old = {s: signal.signal(s, forward) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ the callback
class ResumeState(Callback):
    """RNG continuity across resume, validation that leaves the RNG alone, save-on-signal."""

    def __init__(self, signature: dict | None = None):
        self.signature = signature
        self.stopped_by: int | None = None  # the signal that stopped the run, if one did
        self._requested: int | None = None
        self._saved_step = -1
        self._train_rng: dict | None = None
        self._pending_rng: dict | None = None
        self._old_handlers: dict[int, object] = {}  # signal -> the handler ours replaced

    # -- checkpoint contents ----------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._saved_step = trainer.global_step
        checkpoint[RNG_KEY] = collect_rng_states()
        if self.signature is not None:
            checkpoint[SIGNATURE_KEY] = self.signature

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Applied at the next epoch start, not now: a resumed run builds its training
        # iterator once more than an uninterrupted one (FitLoop.setup_data, then the epoch
        # start), and each build draws a seed from the global RNG. Restoring at the epoch
        # start makes the draws after it, the shuffle seed included, the uninterrupted ones.
        self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install_signal_handlers()
        # A run restarted mid-epoch does not call on_train_epoch_start for that epoch; its
        # training iterator was built already, from the loader's own generator and the
        # checkpointed position (data/resumable_sampler.py), so no draw is left to skip.
        if self._pending_rng is not None and trainer.fit_loop.restarted_mid_epoch:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    # -- validation does not move the training RNG --------------------------------------
    # The state at the end of each training batch is the training stream's; validation
    # (its loader's seed draw happens before on_validation_start) gets it back afterwards.
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._train_rng is not None:
            torch.set_rng_state(self._train_rng["torch"])
            if "cuda" in self._train_rng:
                torch.cuda.set_rng_state_all(self._train_rng["cuda"])

    # -- signals --------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        # Lightning registered its handlers by now. Ours replace its SIGTERM handler: that one
        # broadcasts from inside the handler, a collective that meets whatever collective the
        # other ranks are in at that moment (DDP hangs or mixes them up). A handler here only
        # records the signal; the ranks agree at the end of the step (on_train_batch_end).
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            # SIGUSR1 under SLURM auto-requeue is Lightning's: hpc_ckpt + requeue
            if name == "SIGUSR1" and signal.getsignal(sig) not in (signal.SIG_DFL, None):
                continue
            # SIGUSR2 is submitit's "time is nearly up" signal (hydra/launcher=slurm); its own
            # handler requeues the job and exits at once. Ours runs first: save last.ckpt at
            # the end of this step, then hand over to submitit's.
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.info("received signal %d: saving last.ckpt after this step, then stopping", signum)
        self._requested = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Only torch's generators: validation moves nothing else (the val loader's seed draw
        # is torch's; validation_step and the callbacks sample with their own generators).
        # All four RNGs cost ~130 us per step to copy, torch's alone ~2 us.
        self._train_rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self._train_rng["cuda"] = torch.cuda.get_rng_state_all()
        if 0 < trainer.max_steps <= trainer.global_step:
            # The final step is saved here, inside its epoch: by on_train_end Lightning has
            # marked a max_steps stop's epoch complete, and a resume with a larger max_steps
            # would skip the rest of it (not the uninterrupted run's batches).
            self.save_last(trainer)
        signum = int(self._requested or (signal.SIGTERM if trainer.received_sigterm else 0))
        if trainer.world_size > 1:
            # Every rank takes the same branch (the save below is a collective), and stops for
            # the same signal: one rank's signal (a scheduler may signal any one process)
            # stops them all. One 1-element all-reduce per step.
            mine = torch.tensor([signum], device=pl_module.device)
            signum = int(trainer.strategy.reduce(mine, reduce_op="max").item())
        if not signum:
            return
        self._requested = self.stopped_by = signum
        self.save_last(trainer)
        old = self._old_handlers.get(getattr(signal, "SIGUSR2", None))
        if signum == getattr(signal, "SIGUSR2", None) and callable(old):
            old(signum, None)  # submitit: requeue (it may exit the process here)
        if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            # A spawned rank (trainer=ddp_sim) that raised SIGTERMException (a SystemExit)
            # would exit 0 without handing its results back, and the launching process would
            # wait for them for ever: end fit as a normal stop and say why in the results.
            trainer.should_stop = True
            trainer.callback_metrics[STOPPED_BY_KEY] = torch.tensor(signum, dtype=torch.float64)
            trainer.callback_metrics[STOPPED_AT_KEY] = torch.tensor(
                trainer.global_step, dtype=torch.float64
            )
            return
        raise SIGTERMException()  # train.py: exit 128 + signum, no export

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or self._requested or signal.SIGTERM
            self.save_last(trainer)  # e.g. a SIGTERM during validation

    def on_train_end(self, trainer, pl_module) -> None:
        # max_steps off the checkpoint interval: last.ckpt still ends where training did,
        # so raising max_steps and ckpt_path=last continues from the true end.
        if trainer.global_step > 0:
            self.save_last(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def save_last(self, trainer) -> Path | None:
        """checkpoints/last.ckpt of the current step, unless one of this step was saved."""
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is None or ckpt_cb.dirpath is None:
            log.warning("stopping without a checkpoint: the run has no ModelCheckpoint")
            return None
        if self._saved_step == trainer.global_step:
            return None  # a checkpoint of this step exists already (ModelCheckpoint's or ours)
        path = Path(ckpt_cb.dirpath) / f"{ckpt_cb.CHECKPOINT_NAME_LAST}{ckpt_cb.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        # ModelCheckpoint(save_last=True) writes last.ckpt again at on_train_end unless it saved
        # one itself; a run stopped before its first periodic save (max_steps=1) would then get
        # last.ckpt rewritten after Lightning marked the epoch complete, and resume in the next
        # epoch. Telling it that last.ckpt exists keeps ours, the one saved inside the epoch.
        if hasattr(ckpt_cb, "_last_checkpoint_saved"):
            ckpt_cb._last_checkpoint_saved = str(path)
        log.info("step %d saved to %s", trainer.global_step, path)
        return path


__all__ = [
    "STOPPED_AT_KEY",
    "STOPPED_BY_KEY",
    "AtomicCheckpointIO",
    "ResumeState",
    "collect_rng_states",
    "forward_signals_to_ranks",
    "set_rng_states",
]
