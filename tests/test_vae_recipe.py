"""The VAE recipe's training mechanics: the adversarial term's start and adaptive weight, the
EMA that validation and the export see. In-process, a tiny autoencoder on random images."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from latent_diffusion.vae.module import MAX_ADAPTIVE_WEIGHT, VAETrainer, adaptive_gan_weight

TINY = {
    "in_channels": 1,
    "block_out_channels": [8, 16, 16],
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    torch.manual_seed(0)
    w = torch.randn(3, 5, requires_grad=True)
    x, y = torch.randn(5, 7), torch.randn(3, 7)
    out = w @ x
    rec = ((out - y) ** 2).mean()
    adv = -(out * 0.3).mean()
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0]
    lam = adaptive_gan_weight(rec, adv, w)
    assert lam.item() == pytest.approx((g_rec.norm() / (g_adv.norm() + 1e-4)).item(), rel=1e-5)
    assert not lam.requires_grad
    # an adversarial gradient of zero at the layer: the weight is clamped, not infinite
    flat = adaptive_gan_weight(rec, out.sum() * 0.0, w)
    assert math.isfinite(flat.item()) and flat.item() == MAX_ADAPTIVE_WEIGHT


class _Record(Callback):
    """What the module logged at every step, and the discriminator's weights before and after."""

    def __init__(self):
        self.logged: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(tmp_path, steps: int, val: bool, **module_kw) -> tuple[VAETrainer, _Record]:
    torch.manual_seed(0)
    x = torch.rand(32, 1, 32, 32) * 2 - 1
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8)
    module = VAETrainer(
        autoencoder=TINY, lr=2e-3, warmup_steps=2, n_log_images=2, num_threads=1, **module_kw
    )
    rec = _Record()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1 if val else 0,
        val_check_interval=steps if val else None,
        check_val_every_n_epoch=None,
        callbacks=[rec],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader if val else None)
    return module, rec


def test_adversarial_term_starts_at_its_step_with_a_finite_weight(tmp_path):
    start, max_steps = 4, 10
    torch.manual_seed(1)
    module, rec = _fit(tmp_path, max_steps, val=False, gan_weight=0.5, gan_start_step=start)
    # Lightning's max_steps counts both optimisers' steps once the discriminator trains
    steps = start + (max_steps - start) // 2
    assert module._g_steps == steps == len(rec.logged)
    # before the start: the autoencoder alone; from it on: the hinge term and its lambda
    assert all("train/g_adv" not in m for m in rec.logged[:start])
    after = rec.logged[start:]
    assert len(after) == steps - start
    assert all("train/g_adv" in m and "train/d_loss" in m for m in after)
    lams = [m["train/gan_lambda"] for m in after]
    assert all(math.isfinite(v) and 0 < v <= MAX_ADAPTIVE_WEIGHT for v in lams), lams
    # the discriminator's optimiser stepped only from the start: one step per generator step
    opt_d = module.optimizers()[1].optimizer
    states = [opt_d.state[p]["step"] for p in module.disc.parameters()]
    assert all(int(s) == steps - start for s in states)


def test_ema_weights_are_validated_and_exported(tmp_path):
    module, _ = _fit(tmp_path, 6, val=True, ema_decay=0.9)
    raw = {k: v.clone() for k, v in module.vae.state_dict().items()}
    shadow = module.ema.shadow()
    # validation swapped the EMA in and back out: training weights are intact after it
    moved = [k for k in shadow if not torch.equal(raw[k], shadow[k])]
    assert moved, "after 6 steps the EMA differs from the training weights"
    exported = module.export_autoencoder().state_dict()
    for k in shadow:
        assert torch.equal(exported[k], shadow[k]), k
