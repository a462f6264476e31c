"""data.latents_on_device: cached latents served by index from the device tensors give the
same batches as the ordinary DataLoader path, in one process and per DDP rank."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, DistributedSampler

from latent_diffusion.data.device_batches import OnDeviceBatches
from latent_diffusion.data.latent_cache import PosteriorDataset
from latent_diffusion.utils.errors import UserError
from latent_diffusion.vae import FrozenVAE
from latent_diffusion.vae.module import build_autoencoder

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cached_datamodule(tmp_path, on_device):
    """The composed data=microdoppler config with latents=cached, encoded by a small random f4
    VAE."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "data.n_per_class=5",
                "data.val_per_class=2",
                "data.test_per_class=2",
                "data.batch_size=8",
                "data.latents=cached",
                f"data.latents_on_device={on_device}",
                f"paths.cache_dir={tmp_path / 'cache'}",
            ],
        )
    dm = instantiate(cfg.data)
    torch.manual_seed(0)
    vae = FrozenVAE(
        build_autoencoder(block_out_channels=(8, 16, 16), norm_num_groups=8),
        None,
        data_channels=1,
        weights_hash="test",
    )
    x = torch.stack([dm.dataset("train")[i][0] for i in range(40)])
    vae.ensure_stats(lambda: DataLoader(x, batch_size=20), None, min_latents=40)
    dm.use_latent_cache(vae, tmp_path / "cache" / "latents")
    return dm


def _epochs(loader, n=2, seed=123):
    torch.manual_seed(seed)
    out = []
    for epoch in range(n):
        loader.sampler.set_epoch(epoch) if hasattr(loader.sampler, "set_epoch") else None
        out.append([{k: v.clone() for k, v in b.items()} for b in loader])
    return out


def test_on_device_batches_equal_the_dataloader_batches(tmp_path):
    base = _cached_datamodule(tmp_path, "false")
    dev = _cached_datamodule(tmp_path, "true")
    a, b = base.train_dataloader(), dev.train_dataloader()
    assert isinstance(a, DataLoader) and isinstance(b, OnDeviceBatches)
    assert len(a) == len(b) == 40 // 8
    ea, eb = _epochs(a), _epochs(b)
    for batches_a, batches_b in zip(ea, eb, strict=True):
        assert len(batches_a) == len(batches_b) == 5
        for x, y in zip(batches_a, batches_b, strict=True):
            assert x.keys() == y.keys() == {"mean", "std", "y"}
            for k in x:
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    # a new shuffle each epoch, and every training item exactly once per epoch
    assert not torch.equal(eb[0][0]["mean"], eb[1][0]["mean"])
    assert torch.cat([bt["y"] for bt in eb[0]]).bincount().tolist() == [5] * 8
    # validation keeps the DataLoader path either way
    assert isinstance(dev.val_dataloader(), DataLoader)


def test_auto_stays_on_the_dataloader_on_cpu_and_bad_values_fail(tmp_path):
    assert isinstance(_cached_datamodule(tmp_path, "auto").train_dataloader(), DataLoader)
    from latent_diffusion.data.datamodule import SpectrogramDataModule

    with pytest.raises(UserError, match="latents_on_device"):
        SpectrogramDataModule(source="microdoppler", latents_on_device="gpu")


@pytest.mark.parametrize(
    "n,batch,drop_last",
    [(40, 8, True), (40, 8, False), (37, 8, True), (37, 8, False), (5, 4, False), (5, 2, True)],
)
def test_rank_shares_match_lightnings_distributed_sampler(n, batch, drop_last):
    """Lightning injects DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED) into a training
    DataLoader under DDP; the device path must give each rank the same share, epoch by epoch."""
    g = torch.Generator().manual_seed(1)
    ds = PosteriorDataset(
        torch.randn(n, 4, 2, 2, generator=g), torch.rand(n, 4, 2, 2, generator=g), torch.arange(n)
    )
    seen = {0: [], 1: []}
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ref = DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=drop_last)
        dev = OnDeviceBatches(
            {"mean": ds.mean, "std": ds.std, "y": ds.y},
            batch,
            shuffle=True,
            drop_last=drop_last,
            rank=rank,
            world_size=2,
            seed=7,
        )
        assert len(dev) == len(ref)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            dev.set_epoch(epoch)
            got, want = list(dev), list(ref)
            assert len(got) == len(want)
            for x, y in zip(got, want, strict=True):
                for k in ("mean", "std", "y"):
                    torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
            if epoch == 0:
                seen[rank] = torch.cat([b["y"] for b in got]).tolist()
    # the two ranks split one permutation, padded to equal shares by repeating its head
    both = seen[0] + seen[1]
    if not drop_last:  # every item at least once, and only the padding twice
        assert sorted(set(both)) == list(range(n)) and len(both) == 2 * math.ceil(n / 2)
    else:  # the batches drop each share's tail; only a padded item may be on both ranks
        assert len(both) == 2 * (math.ceil(n / 2) // batch) * batch
        assert len(set(seen[0]) & set(seen[1])) <= n % 2


class _RecordLabels(L.LightningModule):
    """Trains nothing of interest; writes the labels each rank saw, per epoch, to out_dir."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out_dir = out_dir
        self.seen: list[list[int]] = []

    def on_train_epoch_start(self):
        self.seen.append([])

    def training_step(self, batch, batch_idx):
        self.seen[-1] += batch["y"].tolist()
        return (self.w * batch["mean"].mean()).sum()

    def on_train_end(self):
        torch.save(self.seen, Path(self.out_dir) / f"rank{self.global_rank}.pt")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.slow
def test_ddp_ranks_get_the_distributed_sampler_share(tmp_path):
    """Two spawned CPU ranks through Lightning: the device path is left alone by Lightning's
    sampler injection, receives set_epoch, and gives each rank exactly the share that the
    DistributedSampler Lightning injects into the DataLoader path would give."""
    from lightning.pytorch.strategies import DDPStrategy

    dm = _cached_datamodule(tmp_path, "true")
    L.seed_everything(3)  # PL_GLOBAL_SEED: the DistributedSampler seed
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=False,
        strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_RecordLabels(str(tmp_path)), datamodule=dm)
    ds = dm._latent_splits["train"]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        want = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=8, sampler=sampler, drop_last=True)
            want.append(torch.cat([b["y"] for b in loader]).tolist())
        assert got == want, rank
        assert (
            len(got[0]) == 16 and got[0] != got[1]
        )  # 40 items / 2 ranks, batches of 8; reshuffled
