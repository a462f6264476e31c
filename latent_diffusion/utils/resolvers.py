"""OmegaConf resolvers the configs use; registered when the package is imported."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """wandb runs offline unless WANDB_MODE=online: a run never stops at a login prompt.
    (`wandb sync <run>/wandb/offline-run-*` uploads later.)"""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def register() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
