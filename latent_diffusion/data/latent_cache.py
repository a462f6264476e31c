"""Cached latents: the VAE posterior of every image, computed once.

What is stored is the RAW posterior (mean, std) of the frozen VAE, not a
sample: a sample would freeze one draw of the encoder's noise for the whole
training run. The module draws z = mean + std * eps each
step. Scale and shift are applied when the cache is read, so re-measured
latent statistics never make a cache stale; the weights hash, the data
fingerprint and the split name key the file, so another VAE or other data
always builds a new cache. Two processes (DDP ranks, sweep jobs) sharing the
folder take a file lock: the first builds, the others wait and read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader, Dataset

from latent_diffusion.utils.io import atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)


class PosteriorDataset(Dataset):
    """Items {"mean": (c, h, w), "std": (c, h, w), "y": ()} in the denoiser's scaled space."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor):
        self.mean, self.std, self.y = mean, std, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"mean": self.mean[i], "std": self.std[i], "y": self.y[i]}


@torch.no_grad()
def encode_dataset(vae, dataset: Dataset, device=None, batch_size: int = 64):
    """Raw posterior mean and std (N, c, h, w) and labels (N,) of every item."""
    means, stds, ys = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in loader:
        mean, std = vae.posterior(x.to(device or vae.device))  # (B, c, h, w) raw
        # contiguous: a conv backend may hand back channels-last strides, which safetensors refuses
        means.append(mean.float().cpu().contiguous())
        stds.append(std.float().cpu().contiguous())
        ys.append(torch.as_tensor(y))
    return torch.cat(means).contiguous(), torch.cat(stds).contiguous(), torch.cat(ys).long()


def build_latent_cache(
    vae, dataset: Dataset, data_fingerprint: dict, split: str, cache_dir, device=None
) -> PosteriorDataset:
    key = stable_hash({"vae": vae.weights_hash, "data": data_fingerprint, "split": split})
    path = Path(cache_dir) / f"{split}-{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            t = st_load(path.read_bytes())
        else:
            log.info("encoding the %s split (%d images) into %s", split, len(dataset), path)
            mean, std, y = encode_dataset(vae, dataset, device)
            t = {"mean": mean, "std": std, "y": y}
            atomic_write_bytes(path, st_save(t, metadata={"split": split, "key": key}))
    mean, std = vae.scale_posterior(t["mean"], t["std"])  # (z - shift) * scale, std * scale
    return PosteriorDataset(mean, std, t["y"])


__all__ = ["PosteriorDataset", "build_latent_cache", "encode_dataset"]
