"""The contract between data sources and the DataModule.

A *source* knows where spectrograms come from (the built-in simulator, an
image folder, .npy/.mat files) and hands out one torch Dataset per split.
Every item is `(x, y)`: x a float32 tensor (C, H, W) in [-1, 1] (the package
pixel convention, C = 1 for spectrograms), y the integer class index into
`class_names`. Sources are registered by name so that a data config says
`source: microdoppler` and keeps its own keys flat (`data.n_per_class`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")


@runtime_checkable
class SpectrogramSource(Protocol):
    class_names: list[str]
    channels: int  # 1 for spectrograms
    image_size: int  # H == W

    def split(self, name: str) -> Dataset:
        """Dataset of (x (C,H,W) float32 in [-1,1], y int) for 'train' | 'val' | 'test'."""
        ...

    def fingerprint(self) -> dict:
        """JSON-able description of everything that determines the pixels (for cache keys)."""
        ...


_SOURCES: dict[str, Callable[..., SpectrogramSource]] = {}


def register_source(name: str):
    def deco(factory):
        _SOURCES[name] = factory
        return factory

    return deco


def build_source(name: str, **kwargs) -> SpectrogramSource:
    # Import here so registering modules load lazily (the simulator pulls scipy).
    import latent_diffusion.data.image_folder  # noqa: F401
    import latent_diffusion.data.simulator  # noqa: F401

    if name not in _SOURCES:
        from latent_diffusion.utils.errors import UserError

        raise UserError(
            f"unknown data source '{name}'; choose one of {sorted(_SOURCES)} (conf/data/*.yaml)"
        )
    return _SOURCES[name](**kwargs)
