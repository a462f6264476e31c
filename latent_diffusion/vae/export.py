"""Export a trained VAE: a diffusers folder + latent_stats.json + reconstructions.png, atomically.

Layout of `<out_dir>/`:
  config.json, diffusion_pytorch_model.safetensors   AutoencoderKL.save_pretrained
  latent_stats.json   shift / scale over >= 2000 training latents, weights hash, data fingerprint
  reconstructions.png validation originals (one per class), their reconstructions, and
                      |original - reconstruction| x 4 (black = equal)
  metrics.json        val PSNR / SSIM of the VAE and of the bicubic thumbnail baseline, the
                      background speckle contrast of originals and reconstructions, and how
                      far the reconstructions move each envelope statistic (kinematics)

Everything is written into a temporary folder beside `out_dir` and renamed into
place (utils.io.atomic_dir), so a killed run never leaves an export without its
stats. An existing folder is replaced only if it is itself an export.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_dir, atomic_write_bytes, atomic_write_json
from latent_diffusion.utils.pixels import quantize_8bit, to_unit
from latent_diffusion.vae.interface import FrozenVAE
from latent_diffusion.vae.module import bicubic_baseline, grid_png
from latent_diffusion.vae.stats import STATS_FILE, save_latent_stats, vae_weights_hash

log = logging.getLogger(__name__)


def one_per_class(dataset: Dataset, n: int = 8) -> torch.Tensor:
    """Up to n images (n, C, H, W), the first of each class, then the next ones in order."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    firsts, seen = [], set()
    for i, y in enumerate(labels):
        if int(y) not in seen:
            seen.add(int(y))
            firsts.append(i)
    rest = [i for i in range(len(dataset)) if i not in set(firsts)]
    idx = (firsts + rest)[:n]
    return torch.stack([dataset[i][0] for i in idx])


# reconstructions.png's difference row: |x - x^| x 4, so 1/8 of full scale is half grey
DIFF_GAIN = 4.0


def difference_row(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """|x - xr| x DIFF_GAIN as images in [-1, 1] (-1 = no difference), (N, C, H, W)."""
    d = (to_unit(x) - to_unit(xr)).abs() * DIFF_GAIN  # (N, C, H, W) in [0, 1] of full scale
    return d.clamp(0, 1) * 2 - 1


@torch.no_grad()
def reconstruction_metrics(
    vae: FrozenVAE,
    dataset: Dataset,
    batch_size: int = 64,
    dynamic_range_db: float = 45.0,
    kinematics: dict | None = None,
) -> dict:
    """PSNR / SSIM ([0, 1] images) of posterior-mean reconstructions and of the bicubic
    baseline; the background speckle contrast (metrics/texture.py) of both sets; with
    `kinematics` ({"class_names", "v_max", "duration_s"}) the paired envelope shifts
    (metrics/kinematics.py) between each original and its reconstruction."""
    from latent_diffusion.metrics.texture import contrast_summary

    xs, recs, bases, ys = [], [], [], []
    c, h, w = vae.latent_shape(dataset[0][0].shape[-1])
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.to(vae.device)
        xs.append(to_unit(x))
        recs.append(to_unit(vae.decode(vae.encode(x, sample=False))))
        bases.append(to_unit(bicubic_baseline(x, c * h * w)))
        ys.append(torch.as_tensor(y))
    x, r, b = torch.cat(xs), torch.cat(recs), torch.cat(bases)
    thumb = int(round((c * h * w / x.shape[1]) ** 0.5))  # thumbnail side with the latent's numbers
    out = {
        "n_images": len(x),
        "psnr": float(peak_signal_noise_ratio(r, x, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(r, x, data_range=1.0)),
        "psnr_bicubic_baseline": float(peak_signal_noise_ratio(b, x, data_range=1.0)),
        "ssim_bicubic_baseline": float(structural_similarity_index_measure(b, x, data_range=1.0)),
        "baseline": f"area-down-sample to {thumb}^2 + bicubic up",
        **contrast_summary(
            x[:, 0].cpu().numpy(), r[:, 0].cpu().numpy(), dynamic_range_db=dynamic_range_db
        ),
        "speckle_dynamic_range_db": float(dynamic_range_db),
    }
    if kinematics is not None:
        out["kinematics"] = reconstruction_kinematics(
            x, r, torch.cat(ys), dynamic_range_db=dynamic_range_db, **kinematics
        )
    return out


def reconstruction_kinematics(
    x: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    *,
    class_names,
    v_max: float,
    duration_s: float,
    dynamic_range_db: float,
) -> dict:
    """Envelope statistics of originals x and reconstructions r ((N, C, H, W) in [0, 1]),
    both on the 8-bit grid as `evaluate` reads images, paired image by image."""
    from latent_diffusion.metrics.kinematics import kinematic_stats, paired_shifts

    axes = {"v_max": v_max, "dynamic_range_db": dynamic_range_db, "duration_s": duration_s}
    a, b = (kinematic_stats(quantize_8bit(t[:, :1] * 2 - 1).cpu().numpy(), **axes) for t in (x, r))
    out = paired_shifts(a, b, y.cpu().numpy(), list(class_names))
    out["doppler_row_m_s"] = round(2 * v_max / x.shape[-2], 4)  # the resolution to compare with
    return out


def export_vae(
    model: AutoencoderKL,
    out_dir: str | os.PathLike,
    *,
    data_channels: int,
    train_batches: Callable[[], Iterable],
    data_fingerprint: dict | None,
    val_dataset: Dataset | None = None,
    per_channel: bool = True,
    min_latents: int = 2000,
    extra_metrics: dict | None = None,
    dynamic_range_db: float = 45.0,
    kinematics: dict | None = None,
) -> Path:
    """Write the export folder and return its path (see the module doc for the layout)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / STATS_FILE).exists():
        raise UserError(
            f"{out_dir} exists and is not a VAE export (no {STATS_FILE}); it is not overwritten: "
            "choose another out_dir or remove it"
        )
    model = copy.deepcopy(model).float().eval()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        vae = FrozenVAE(model, None, data_channels, vae_weights_hash(tmp), path=None)
        stats = vae.ensure_stats(
            train_batches, data_fingerprint, per_channel, min_latents, cache_dir=None
        )
        save_latent_stats(tmp / STATS_FILE, stats)
        metrics = dict(extra_metrics or {})
        if val_dataset is not None and len(val_dataset) > 0:
            x = one_per_class(val_dataset).to(vae.device)  # (8, C, H, W)
            xr = vae.decode(vae.encode(x, sample=False))
            atomic_write_bytes(
                tmp / "reconstructions.png", grid_png([x, xr, difference_row(x, xr)])
            )
            metrics["val"] = reconstruction_metrics(
                vae, val_dataset, dynamic_range_db=dynamic_range_db, kinematics=kinematics
            )
            log.info("VAE export: val %s", metrics["val"])
        atomic_write_json(tmp / "metrics.json", metrics)
    log.info("exported the VAE to %s", out_dir)
    return out_dir


__all__ = [
    "difference_row",
    "export_vae",
    "one_per_class",
    "reconstruction_kinematics",
    "reconstruction_metrics",
]
