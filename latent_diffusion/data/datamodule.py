"""SpectrogramDataModule: one LightningDataModule for every source and latent mode.

latents = "pixel"   -> batches {"x": (B, C, H, W) in [-1, 1], "y": (B,)}; the
                       pixel-space baseline, and the VAE's own training data.
latents = "online"  -> the same pixel batches; the LightningModule encodes them
                       with the frozen VAE on the training device each step.
latents = "cached"  -> {"mean": (B, c, h, w), "std": (B, c, h, w), "y": (B,)}:
                       the VAE posterior of each image computed once
                       (latent_cache.py); the module draws a fresh latent every
                       step, so the cache does not freeze the posterior noise.
                       With latents_on_device (true, or auto on a GPU where the
                       tensors fit) the training split is copied to the device
                       once and served by index (device_batches.py).

The training order is ResumableSampler's (resumable_sampler.py), a function of
(seed, epoch, rank); the training loader's `state_dict` puts the position inside the
epoch into each checkpoint, so a run resumed from a checkpoint taken mid-epoch trains on the
batches the uninterrupted run would have (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from latent_diffusion.data.resumable_sampler import ResumableDataLoader, ResumableSampler
from latent_diffusion.data.source import SPLITS, SpectrogramSource, build_source
from latent_diffusion.data.transforms import Augment, AugmentedDataset
from latent_diffusion.utils.errors import UserError

log = logging.getLogger(__name__)
LATENT_MODES = ("pixel", "online", "cached")


def split_labels(ds) -> np.ndarray:
    """(N,) int labels of a split without decoding its images where the source keeps them."""
    for attr in ("labels", "y"):
        if (v := getattr(ds, attr, None)) is not None:
            return np.asarray(v, dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def split_item_ids(ds) -> list[str]:
    """One stable id per item: relative file paths (image folders) or simulator sample ids."""
    for attr in ("files", "item_ids"):
        if (v := getattr(ds, attr, None)) is not None:
            return [str(f) for f in v]
    return [str(i) for i in range(len(ds))]


def _collate_pixels(items):
    xs, ys = zip(*items, strict=True)
    return {"x": torch.stack(xs), "y": torch.as_tensor(ys, dtype=torch.long)}


class SpectrogramDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        latents: str = "pixel",
        augment: dict | None = None,
        eval_batch_size: int | None = None,
        latents_on_device: bool | str = "auto",
        fraction: float = 1.0,
        fraction_seed: int = 0,
        **source_kwargs,
    ):
        super().__init__()
        if latents not in LATENT_MODES:
            raise UserError(f"data.latents={latents!r} is not one of {LATENT_MODES}")
        if batch_size < 1:
            raise UserError(f"data.batch_size={batch_size} must be >= 1")
        self.source_name = source
        self.source_kwargs = source_kwargs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.latents = latents
        if latents_on_device not in (True, False, "auto"):
            raise UserError(
                f"data.latents_on_device={latents_on_device!r}: use true, false or auto"
            )
        self.latents_on_device = latents_on_device
        self.augment = Augment(**(augment or {}))
        # a seeded stratified share of the training split (splits.fraction_subset): the
        # small-data setting of the augmentation study; val and test stay whole
        self.fraction, self.fraction_seed = float(fraction), int(fraction_seed)
        if not 0.0 < self.fraction <= 1.0:
            raise UserError(
                f"data.fraction={fraction} must be in (0, 1]: the share of the training split to "
                f"keep"
            )
        self.subset: dict | None = (
            None  # what the training split was cut to (recorded in the export)
        )
        self._source: SpectrogramSource | None = None
        self._splits: dict[str, Dataset] = {}
        self._latent_splits: dict[str, Dataset] = {}

    # -- source -----------------------------------------------------------------
    @property
    def source(self) -> SpectrogramSource:
        if self._source is None:
            self._source = build_source(self.source_name, **self.source_kwargs)
        return self._source

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.source.channels

    @property
    def image_size(self) -> int:
        return self.source.image_size

    def fingerprint(self) -> dict:
        fp = {"source": self.source_name, **self.source.fingerprint()}
        if self.fraction < 1.0:  # a subset is other data: its VAE, stats and caches are its own
            fp["train_fraction"] = {"fraction": self.fraction, "seed": self.fraction_seed}
        return fp

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: sources with a disk
        # cache (the simulator) build it here, the other ranks read it in setup.
        for name in SPLITS:
            self.source.split(name)

    def setup(self, stage: str | None = None) -> None:
        for name in SPLITS:
            if name not in self._splits:
                ds = self.source.split(name)
                if name == "train":
                    ds = self._training_subset(ds)
                self._splits[name] = ds

    def _training_subset(self, ds: Dataset) -> Dataset:
        from latent_diffusion.data.splits import fraction_subset, subset_fingerprint

        labels = split_labels(ds)
        idx = fraction_subset(labels, self.fraction, self.fraction_seed, self.class_names)
        ids = split_item_ids(ds)
        self.subset = {
            "fraction": self.fraction,
            "seed": self.fraction_seed,
            "n": len(idx),
            "n_full": len(labels),
            "per_class": {c: int((labels[idx] == i).sum()) for i, c in enumerate(self.class_names)},
            "fingerprint": subset_fingerprint([ids[i] for i in idx]),
        }
        if self.fraction < 1.0:
            log.info(
                "data.fraction=%g data.fraction_seed=%d: training on %d of %d training items (%s)",
                self.fraction,
                self.fraction_seed,
                len(idx),
                len(labels),
                self.subset["fingerprint"],
            )
            return Subset(ds, idx.tolist())
        return ds

    def dataset(self, split: str) -> Dataset:
        self.setup()
        return self._splits[split]

    # -- cached latents ------------------------------------------------------------
    def use_latent_cache(self, vae, cache_dir, device=None) -> None:
        """Encode every split once with the frozen VAE (latent_cache.py) and serve posteriors."""
        from latent_diffusion.data.latent_cache import build_latent_cache

        self.setup()
        if self.augment.enabled:
            log.warning(
                "data.latents=cached encodes each image once: the augmentations %s are not "
                "applied to cached latents (use data.latents=online to keep them)",
                self.augment,
            )
        for name in SPLITS:
            self._latent_splits[name] = build_latent_cache(
                vae, self._splits[name], self.fingerprint(), name, cache_dir, device=device
            )

    # -- loaders ---------------------------------------------------------------------
    def _placement(self) -> tuple[torch.device, int, int, int]:
        """(device, rank, world size, seed) of the run fitting this module; CPU outside fit."""
        trainer = getattr(self, "trainer", None)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # what Lightning's DistributedSampler uses
        if trainer is None:
            return torch.device("cpu"), 0, 1, seed
        return trainer.strategy.root_device, trainer.global_rank, trainer.world_size, seed

    def _on_device_batches(self, ds, drop_last: bool):
        """The training split as OnDeviceBatches when data.latents_on_device says so, else None."""
        from latent_diffusion.data.device_batches import OnDeviceBatches, fits_on_device

        if self.latents != "cached" or self.latents_on_device is False:
            return None
        device, rank, world, seed = self._placement()
        tensors = {"mean": ds.mean, "std": ds.std, "y": ds.y}
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.latents_on_device == "auto" and not fits_on_device(nbytes, device):
            return None
        log.info("cached training latents on %s: %.1f MB, served by index", device, nbytes / 1e6)
        batches = OnDeviceBatches(
            tensors,
            self.batch_size,
            shuffle=True,
            drop_last=drop_last,
            rank=rank,
            world_size=world,
            seed=seed,
            device=device,
        )
        self._track(batches.sampler)
        return batches

    # -- position inside the epoch (mid-epoch exact resume) ----------------------------
    def _track(self, sampler: ResumableSampler) -> None:
        """The sampler's checkpointed position: finished training steps of this epoch x batch
        size."""

        def progress() -> int:
            trainer = getattr(self, "trainer", None)
            if trainer is None:
                return 0
            return trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size

        sampler.progress = progress

    def _loader(self, split: str, train: bool):
        self.setup()
        if self.latents == "cached":
            if split not in self._latent_splits:
                raise RuntimeError(
                    "data.latents=cached: call use_latent_cache(vae, ...) before fit"
                )
            ds, collate = self._latent_splits[split], None
        else:
            ds = self._splits[split]
            if train and self.augment.enabled:
                ds = AugmentedDataset(ds, self.augment)
            collate = _collate_pixels
        if len(ds) == 0:
            raise UserError(f"the {split} split of data source '{self.source_name}' is empty")
        drop_last = train and len(ds) >= self.batch_size
        # validation and test stay on the DataLoader path: they run rarely, in eval batches
        if train and (batches := self._on_device_batches(ds, drop_last)) is not None:
            return batches
        sampler = None
        if train:
            _, rank, world, seed = self._placement()
            sampler = ResumableSampler(ds, rank=rank, world_size=world, seed=seed, shuffle=True)
            self._track(sampler)
        return (ResumableDataLoader if train else DataLoader)(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            # the workers' base seed from a generator of its own: building an iterator then
            # draws nothing from the global RNG, which a resumed run restores mid-epoch
            generator=torch.Generator().manual_seed(self._placement()[3]) if train else None,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate,
        )

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
