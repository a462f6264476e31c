"""Opening a checkpoint without running its code, and refusing one from another run.

Checkpoints travel between labs. `torch.load` with the default pickle loader
runs whatever a file's pickle stream asks for (any callable, with any
arguments), so opening someone's .ckpt could execute their code. Every load
here uses `weights_only=True`: tensors, numbers, strings, lists, dicts only.
Our own checkpoints hold nothing else (tests/test_reliability.py loads them that
way), so a file that needs more is refused, not half-trusted.

A checkpoint also records the *run signature*: what the weights mean (class
list, latent shape, denoiser architecture, diffusion parameterisation, VAE
weights). Resuming with a different one would either crash deep inside
`load_state_dict` or, worse, silently train a model whose label 3 now means
another class; `check_signature` spells out every difference instead.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from latent_diffusion.utils.errors import UserError

SIGNATURE_KEY = "run_signature"
# Model keys that do not change what the weights mean (a resume may change them).
_MODEL_FREE = {"dropout", "p_uncond"}
# Diffusion keys the weights depend on: T, the schedule, what the network predicts, its outputs.
_DIFFUSION_FIXED = ("schedule", "timesteps", "prediction", "learn_sigma", "rescale_timesteps")
_FRESH = "start a fresh run (another run_name, or ckpt_path=null)"


def load_checkpoint(path, map_location="cpu", lightning: bool = True) -> dict:
    """torch.load(weights_only=True) with a UserError naming the file for every way it can fail.
    lightning=False accepts any dict (Lightning's spawn launcher hands weights back that way)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a .ckpt file or ckpt_path=last")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only's unpickler stops at the first global it does not allow-list,
        # before calling anything: nothing of the file has run.
        first = str(err).strip().splitlines()
        why = next(
            (ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else ""
        )
        raise UserError(
            f"refusing to load {path}: it needs arbitrary unpickling, which could run code "
            f"({why.strip()[:200]}). Checkpoints of latent_diffusion.train hold only tensors and "
            f"plain values; use one written by this package, or {_FRESH}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or corrupt: "
            f"{str(err).splitlines()[0][:200]}); "
            f"resume from another .ckpt in {path.parent}, or {_FRESH}"
        ) from None
    if lightning and (not isinstance(ckpt, dict) or "state_dict" not in ckpt):
        raise UserError(
            f"{path} is not a Lightning checkpoint (no state_dict); give a .ckpt of "
            f"latent_diffusion.train"
        )
    return ckpt


def run_signature(cfg: DictConfig, class_names, latent_shape, vae=None) -> dict:
    """What the weights of this run mean; stored in every checkpoint (plain values only)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    diffusion = OmegaConf.to_container(cfg.diffusion, resolve=True)
    return {
        "class_names": [str(c) for c in class_names],
        "latent_shape": [int(s) for s in latent_shape],
        "model": {k: v for k, v in model.items() if k not in _MODEL_FREE},
        "diffusion": {k: diffusion.get(k) for k in _DIFFUSION_FIXED},
        "vae_weights_hash": getattr(vae, "weights_hash", None),
    }


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def signature_differences(saved: dict, current: dict) -> list[str]:
    """'key: <checkpoint value> (checkpoint) vs <current value> (this run)' for every mismatch."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, tuple):
            va = list(va)
        if isinstance(vb, tuple):
            vb = list(vb)
        if va != vb:
            diffs.append(f"{k}: {va!r} (checkpoint) vs {vb!r} (this run)")
    return diffs


def saved_signature(ckpt: dict) -> dict | None:
    """The checkpoint's signature; for checkpoints older than it, what its hparams tell."""
    if SIGNATURE_KEY in ckpt:
        return ckpt[SIGNATURE_KEY]
    hp = ckpt.get("hyper_parameters") or {}
    if "class_names" in hp and "latent_shape" in hp:
        return {"class_names": list(hp["class_names"]), "latent_shape": list(hp["latent_shape"])}
    return None


def check_signature(ckpt: dict, expected: dict | None, path) -> None:
    """UserError spelling out every difference between a checkpoint's run and this one."""
    if expected is None:
        return
    saved = saved_signature(ckpt)
    if saved is None:
        return  # not ours to judge: Lightning's strict load_state_dict still checks the weights
    current = {k: expected.get(k) for k in saved} if SIGNATURE_KEY not in ckpt else expected
    diffs = signature_differences(saved, current)
    if diffs:
        shown = "; ".join(diffs[:12]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 12 else "")
        raise UserError(
            f"checkpoint {path} was trained with a different config than this run: {shown}. "
            f"Resume with the original run's overrides, or {_FRESH}"
        )


__all__ = [
    "SIGNATURE_KEY",
    "check_signature",
    "load_checkpoint",
    "run_signature",
    "signature_differences",
]
