"""VAETrainer: the LightningModule that trains a spectrogram AutoencoderKL.

Loss (per image, pixels in [-1, 1]), after LDM's autoencoder (Rombach et al.
2022, appendix G; Esser et al. 2021, eq. 4) without LPIPS (its VGG weights
cannot be downloaded here):

  L = w1 |x - x^|_1 + w2 |x - x^|^2                 reconstruction
    + wg (|dx x - dx x^|_1 + |dy x - dy x^|_1)       gradient term: edges of the envelopes
    + ws | log(1+|F x|) - log(1+|F x^|) |_1          spectral term: keeps the speckle's
                                                     high frequencies instead of blobs
    + wkl KL(q(z|x) || N(0, I)) / (H W)              a weak prior, only to bound the latents
    + wadv * lambda * (-D(x^))                       PatchGAN hinge, after `gan_start_step`

lambda is LDM's adaptive weight (Esser et al. 2021, eq. 7): the ratio of the gradient
norms of the reconstruction and adversarial terms at the decoder's last layer, so the
adversarial term pulls as hard as the reconstruction whatever their scales (clamped to
[0, 1e4]; `gan_adaptive: false` gives lambda = 1). Before `gan_start_step` the
autoencoder trains alone (LDM's `disc_start`): a discriminator that meets blurry early
reconstructions wins at once and its gradients are noise. `ema_decay` keeps an EMA of the
autoencoder's weights, which validation and the export use.

Manual optimisation because the optional discriminator has its own optimizer;
gradient clipping is therefore done here (`grad_clip`), not by the Trainer.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from latent_diffusion.lit.ema import EMA
from latent_diffusion.utils.io import atomic_write_bytes
from latent_diffusion.utils.pixels import png_bytes, to_unit
from latent_diffusion.vae.stats import batch_images

log = logging.getLogger(__name__)


def build_autoencoder(
    in_channels: int = 1,
    block_out_channels=(32, 64, 64),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 16,
    mid_block_add_attention: bool = False,
    sample_size: int = 64,
) -> AutoencoderKL:
    """An AutoencoderKL that down-samples 2^(len(block_out_channels) - 1) times."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        mid_block_add_attention=mid_block_add_attention,
        sample_size=sample_size,
    )


# ------------------------------------------------------------------ reference numbers


def bicubic_baseline(x: torch.Tensor, latent_values: int) -> torch.Tensor:
    """Area-down-sample x to as many values as its latent holds, bicubic back up.

    The honest bar for a VAE: 4x16x16 = 1024 numbers per 64x64 image is what a
    32x32 thumbnail stores, and a VAE must beat that thumbnail to earn its keep.
    """
    b, c, h, w = x.shape
    side = int(round(math.sqrt(latent_values / c)))
    small = F.interpolate(x.float(), size=(side, side), mode="area")  # (B, C, s, s)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)


def grid_png(rows: list[torch.Tensor], upscale: int = 3, gap: int = 2) -> bytes:
    """PNG of rows of images (each (N, C, H, W) in [-1, 1]), first channel, grey."""
    n, _, h, w = rows[0].shape
    canvas = np.ones((len(rows) * (h + gap) - gap, n * (w + gap) - gap), dtype=np.float32)
    for r, imgs in enumerate(rows):
        for i in range(n):
            canvas[r * (h + gap) : r * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = (
                to_unit(imgs[i, 0]).cpu().numpy()
            )
    img = Image.fromarray((canvas * 255).round().astype(np.uint8))
    return png_bytes(img.resize((img.width * upscale, img.height * upscale), Image.NEAREST))


# ------------------------------------------------------------------ losses


def gradient_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between finite differences along Doppler (rows) and time (columns)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def spectral_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between log-amplitude 2-D spectra: penalises lost high-frequency texture (speckle)."""
    fx = torch.fft.rfft2(x.float(), norm="ortho").abs()
    fy = torch.fft.rfft2(y.float(), norm="ortho").abs()
    return (torch.log1p(fx) - torch.log1p(fy)).abs().mean()


# LDM's clamp of the adaptive weight: a vanishing adversarial gradient must not blow it up.
MAX_ADAPTIVE_WEIGHT = 1e4


def adaptive_gan_weight(
    rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """lambda = |grad_L rec| / (|grad_L adv| + 1e-4) at the decoder's last layer L (Esser et al.
    2021, eq. 7; LDM's `calculate_adaptive_weight`), clamped to [0, 1e4] and detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    lam = g_rec.float().norm() / (g_adv.float().norm() + 1e-4)
    return torch.nan_to_num(lam, nan=0.0).clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a logit per ~receptive-field patch, GroupNorm for small
    batches."""

    def __init__(self, in_channels: int = 1, channels: int = 32, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers):
            c_next = channels * min(2**i, 8)
            layers += [
                nn.Conv2d(c, c_next, 4, 2 if i < n_layers - 1 else 1, 1),
                nn.GroupNorm(8, c_next),
                nn.LeakyReLU(0.2),
            ]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h', w') patch logits


# ------------------------------------------------------------------ the module


class VAETrainer(L.LightningModule):
    def __init__(
        self,
        autoencoder: dict,
        lr: float = 2e-3,
        betas=(0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        lr_final_fraction: float = 0.05,  # cosine decay to this fraction of lr at max_steps
        grad_clip: float | None = 1.0,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        grad_weight: float = 0.0,
        spectral_weight: float = 0.0,
        kl_weight: float = 1e-6,
        gan_weight: float = 0.0,  # 0 = no discriminator at all
        gan_start_step: int = 1000,
        gan_adaptive: bool = True,  # LDM's adaptive weight; False = gan_weight alone
        disc_channels: int = 32,
        disc_layers: int = 3,
        disc_lr: float | None = None,
        ema_decay: float | None = None,  # EMA of the weights for validation and export; None = off
        n_log_images: int = 8,
        num_threads: int | None = None,  # torch.set_num_threads on CPU; None = torch's default
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.vae = build_autoencoder(**dict(autoencoder))
        self.disc = (
            PatchDiscriminator(self.vae.config.in_channels, disc_channels, disc_layers)
            if gan_weight > 0
            else None
        )
        self.ema = EMA(self.vae, decay=float(ema_decay)) if ema_decay else None
        self._ema_swap = None
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.base_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.base_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._log_batch: torch.Tensor | None = None
        self._g_steps = 0

    # -- forward ------------------------------------------------------------------
    def latent_values(self, image_size: int) -> int:
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels * (image_size // f) ** 2

    def reconstruct(self, x: torch.Tensor, sample: bool):
        post = self.vae.encode(x).latent_dist  # q(z|x): mean, std (B, 4, H/f, W/f)
        z = post.sample() if sample else post.mode()
        return self.vae.decode(z).sample, post  # (B, C, H, W)

    def recon_losses(self, x: torch.Tensor, xr: torch.Tensor, post) -> dict[str, torch.Tensor]:
        h = self.hparams
        xr32, x32 = xr.float(), x.float()
        terms = {"l1": (xr32 - x32).abs().mean(), "l2": ((xr32 - x32) ** 2).mean()}
        if h.grad_weight:
            terms["grad"] = gradient_loss(xr32, x32)
        if h.spectral_weight:
            terms["spectral"] = spectral_loss(xr32, x32)
        # KL summed over latent dims, per pixel: comparable weights across image sizes.
        terms["kl"] = post.kl().float().mean() / (x.shape[-1] * x.shape[-2])
        terms["loss"] = (
            h.l1_weight * terms["l1"]
            + h.l2_weight * terms["l2"]
            + h.kl_weight * terms["kl"]
            + h.grad_weight * terms.get("grad", 0.0)
            + h.spectral_weight * terms.get("spectral", 0.0)
        )
        return terms

    # -- training -----------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        h = self.hparams
        total = int(self.trainer.max_steps) if self.trainer.max_steps > 0 else 10**6
        if self.disc is not None and total > h.gan_start_step:
            # after gan_start_step every iteration takes two optimizer steps of max_steps
            total = h.gan_start_step + (total - h.gan_start_step) // 2
        if step < h.warmup_steps:
            return (step + 1) / h.warmup_steps
        t = min((step - h.warmup_steps) / max(total - h.warmup_steps, 1), 1.0)
        return h.lr_final_fraction + (1 - h.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    def training_step(self, batch, batch_idx):
        h = self.hparams
        opts = self.optimizers()
        opt_g, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        step = int(self._g_steps)  # generator steps (global_step counts both optimizers)
        for opt, base in ((opt_g, h.lr), (opt_d, h.disc_lr or h.lr)):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = base * self._lr_factor(step)
        x = batch_images(batch)  # (B, C, H, W) in [-1, 1]
        xr, post = self.reconstruct(x, sample=True)
        terms = self.recon_losses(x, xr, post)
        use_gan = self.disc is not None and step >= h.gan_start_step
        loss = terms["loss"]
        if use_gan:
            terms["g_adv"] = -self.disc(xr).float().mean()  # hinge generator loss
            lam = (
                adaptive_gan_weight(loss, terms["g_adv"], self.vae.decoder.conv_out.weight)
                if h.gan_adaptive
                else torch.ones((), device=loss.device)
            )
            terms["gan_lambda"] = lam
            loss = loss + h.gan_weight * lam * terms["g_adv"]
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if h.grad_clip:
            self.clip_gradients(
                opt_g, gradient_clip_val=h.grad_clip, gradient_clip_algorithm="norm"
            )
        opt_g.step()
        if self.ema is not None:
            self.ema.update(self.vae, step)
        if use_gan:
            # Discriminator hinge loss on a detached reconstruction (Lim & Ye 2017).
            d_real, d_fake = self.disc(x), self.disc(xr.detach())
            terms["d_loss"] = 0.5 * (F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(terms["d_loss"])
            opt_d.step()
        self._g_steps += 1
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        self.log("train/loss", terms["loss"].detach(), prog_bar=True)
        self.log("train/lr", opt_g.param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vae_generator_steps"] = int(self._g_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._g_steps = int(checkpoint.get("vae_generator_steps", 0))

    # -- the weights validation and the export see ----------------------------------------
    def export_autoencoder(self) -> AutoencoderKL:
        """The autoencoder to export: its EMA weights when `ema_decay` is set (loaded in place:
        call once, after training)."""
        if self.ema is not None:
            self.ema.copy_to(self.vae)
        return self.vae

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._ema_swap = self.ema.swap_into(self.vae)
            self._ema_swap.__enter__()

    def _end_ema_swap(self) -> None:
        if self._ema_swap is not None:
            self._ema_swap.__exit__(None, None, None)
            self._ema_swap = None

    # -- validation -------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        x = batch_images(batch)
        xr, post = self.reconstruct(x, sample=False)  # posterior mean: the VAE's best guess
        xb = bicubic_baseline(x, self.latent_values(x.shape[-1]))
        self.val_psnr.update(to_unit(xr), to_unit(x))
        self.val_ssim.update(to_unit(xr), to_unit(x))
        self.base_psnr.update(to_unit(xb), to_unit(x))
        self.base_ssim.update(to_unit(xb), to_unit(x))
        self.log("val/l1", (xr.float() - x.float()).abs().mean(), sync_dist=True)
        if batch_idx == 0:
            self._log_batch = torch.stack(
                [x[: self.hparams.n_log_images], xr[: self.hparams.n_log_images]]
            )

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True)
        self.log("val/ssim", self.val_ssim.compute())
        self.log("val/psnr_bicubic", self.base_psnr.compute())
        self.log("val/ssim_bicubic", self.base_ssim.compute())
        for m in (self.val_psnr, self.val_ssim, self.base_psnr, self.base_ssim):
            m.reset()
        # Trainer.log_dir broadcasts from rank 0: every rank must ask, or DDP deadlocks.
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if (
            self._log_batch is not None
            and self.trainer.is_global_zero
            and not self.trainer.sanity_checking
        ):
            self._log_recon_grid(self._log_batch[0], self._log_batch[1], root)
        self._log_batch = None
        self._end_ema_swap()

    def _log_recon_grid(self, x: torch.Tensor, xr: torch.Tensor, root: Path) -> None:
        png = grid_png([x, xr])
        atomic_write_bytes(root / "recon" / f"step_{self.global_step:06d}.png", png)
        for lg in self.loggers:
            if hasattr(lg, "log_image"):  # WandbLogger
                lg.log_image(
                    "val/reconstructions", [Image.open(io.BytesIO(png))], step=self.global_step
                )
            elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
                img = np.asarray(Image.open(io.BytesIO(png)))
                lg.experiment.add_image(
                    "val/reconstructions", img, self.global_step, dataformats="HW"
                )

    # -- optimisers ---------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        opt_g = torch.optim.AdamW(
            self.vae.parameters(), lr=h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay
        )
        if self.disc is None:
            return opt_g
        opt_d = torch.optim.AdamW(self.disc.parameters(), lr=h.disc_lr or h.lr, betas=(0.5, 0.9))
        return [opt_g, opt_d]


__all__ = [
    "PatchDiscriminator",
    "VAETrainer",
    "adaptive_gan_weight",
    "bicubic_baseline",
    "build_autoencoder",
    "grid_png",
]
