"""OmegaConf resolvers the configs use; registered when the package is imported."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """wandb runs offline unless WANDB_MODE=online: a run never stops at a login prompt.
    (`wandb sync <run>/wandb/offline-run-*` uploads later.)"""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def job_label() -> str:
    """'/<job folder>' (e.g. '/1_model.base_channels=64') for a multirun job, '' otherwise:
    every job of a sweep gets its own wandb display name, not only its own run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return ""
    return "/" + str(hc.sweep.subdir)


def register() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("job_label"):
        OmegaConf.register_new_resolver("job_label", job_label)
