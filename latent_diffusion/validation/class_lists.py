"""Class lists: a class named twice would get two label indices for one folder (or two
rows of one class in a sample grid), silently unbalancing everything downstream."""

from __future__ import annotations

from collections import Counter

from omegaconf import OmegaConf

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation.numbers import ABSENT, select


def check_class_list(cfg, key: str) -> None:
    value = select(cfg, key)
    if value is ABSENT or value is None:
        return
    if not (OmegaConf.is_list(value) or isinstance(value, list | tuple)):
        raise UserError(
            f"{key}={value!r}: must be a list of class names, e.g. {key}=[walk,run], or null for "
            f"all"
        )
    names = [str(v) for v in value]
    if not names:
        raise UserError(f"{key}=[]: give at least one class, or {key}=null for all")
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    if twice:
        raise UserError(
            f"{key}={names}: {', '.join(twice)} listed more than once; list each class once"
        )
