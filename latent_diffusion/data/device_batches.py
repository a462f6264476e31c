"""Cached latents kept on the training device, served as mini-batches by index.

With data.latents=cached the whole training set is a few tensors, (N, c, h, w)
posterior means and stds plus (N,) labels: 16k images of 4x32x32 latents are
0.5 GB. When they fit, copying them to the GPU once removes the per-step
DataLoader work (per-item __getitem__, collate, pin, host->device copy): a
batch is one index_select on the device. On a CPU the tensors are the same
memory either way; only the per-item collation goes.

Batch ORDER is the one the ordinary DataLoader path produces, so the two paths
train on identical batches for a given seed: both take it from one
ResumableSampler (resumable_sampler.py: DistributedSampler's order, seeded by
seed + epoch, this rank's share), which also lets a checkpoint taken inside an
epoch resume at its position. set_epoch is called by Lightning through the
`.sampler` attribute, as on a DataLoader. Lightning leaves iterables that are
not DataLoaders alone (no sampler injection), so the rank split here is the
only one.
"""

from __future__ import annotations

import math

import torch

from latent_diffusion.data.resumable_sampler import ResumableSampler


class OnDeviceBatches:
    """Iterable of {"mean", "std", "y"} batches indexed from tensors on one device."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        n = {len(t) for t in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors of different lengths: {sorted(n)}")
        self.n = n.pop()
        self.tensors = {k: t.to(device) for k, t in tensors.items()}  # copied once, here
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        # Lightning calls dataloader.sampler.set_epoch(epoch); the position lives there too
        self.sampler = ResumableSampler(
            range(self.n), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    # stateful as a ResumableDataLoader: the position inside the epoch goes into checkpoints
    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def _per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def order(self) -> torch.Tensor:
        """This rank's indices for the coming epoch (the trained-on head skipped on resume), (m,)
        int64."""
        return torch.as_tensor(self.sampler.order(), dtype=torch.int64)

    def __iter__(self):
        order = self.order().to(self.device)
        b = self.batch_size
        usable = len(order) - len(order) % b if self.drop_last else len(order)
        for k in range(0, usable, b):
            i = order[k : k + b]  # (B,) on the device
            yield {name: t.index_select(0, i) for name, t in self.tensors.items()}


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """`auto`: a CUDA device with the tensors under `fraction` of its free memory."""
    if device.type != "cuda":
        return False  # CPU: same memory either way; other accelerators: not measured here
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


__all__ = ["OnDeviceBatches", "fits_on_device"]
