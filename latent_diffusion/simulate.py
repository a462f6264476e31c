"""python -m latent_diffusion.simulate out_dir=D n_per_class=N image_size=S seed=K
classes=[walk,run]

Writes a simulated data set in the layout data=image_folder reads:
D/<class>/<class>_<index:05d>.png (8-bit grey, row 0 = +v_max), D/metadata.json
(classes, radar parameters, per-sample parameters) and D/preview.png (one row
per class). The folder is built under a temporary name and renamed into place;
an existing non-empty folder is replaced only if `simulate` wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from latent_diffusion.utils.config_errors import report_config_errors
from latent_diffusion.utils.errors import UserError, report_user_errors
from latent_diffusion.utils.io import atomic_dir, check_replaceable
from latent_diffusion.utils.pixels import png_bytes
from latent_diffusion.validation import preflight

log = logging.getLogger(__name__)
MARKER = "latent_diffusion.simulate"  # metadata["writer"]: folders we may replace


def to_u8(pix_u16: np.ndarray) -> np.ndarray:
    return np.round(pix_u16.astype(np.float64) / 257.0).astype(np.uint8)


def preview_grid(
    rows: list[np.ndarray], names: list[str], pad: int = 2, label_w: int = 64
) -> Image.Image:
    """One row of images per class, the class name on the left (PIL's default font)."""
    h, w = rows[0].shape[1:]
    n = max(len(r) for r in rows)
    grid = Image.new("L", (label_w + n * (w + pad) + pad, len(rows) * (h + pad) + pad), 40)
    draw = ImageDraw.Draw(grid)
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        y = pad + i * (h + pad)
        draw.text((4, y + h // 2 - 5), name, fill=255)
        for j, img in enumerate(row):
            grid.paste(Image.fromarray(img, mode="L"), (label_w + pad + j * (w + pad), y))
    return grid


def simulate(cfg: DictConfig) -> Path:
    from latent_diffusion.data.radar import spectrogram
    from latent_diffusion.data.simulator import CLASSES, RadarConfig, generate, quantize

    out = Path(cfg.out_dir)
    classes = list(CLASSES) if cfg.classes is None else [str(c) for c in cfg.classes]
    bad = [c for c in classes if c not in CLASSES]
    if bad or not classes:
        raise UserError(f"classes={classes}: unknown class {bad}; choose from {list(CLASSES)}")
    if int(cfg.n_per_class) < 1:
        raise UserError(f"n_per_class={cfg.n_per_class} must be >= 1")
    size = int(cfg.image_size)
    if size < 16 or size > 512 or size % 8:
        raise UserError(f"image_size={size} must be a multiple of 8 in [16, 512] (64 or 128)")
    fmt = str(cfg.format)
    if fmt not in ("png", "iq"):
        raise UserError(f"format={fmt!r} must be png (spectrograms) or iq (raw recordings)")
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"split={cfg.split!r} must be train, val or test")
    radar = RadarConfig.make(OmegaConf.to_container(cfg.radar) if cfg.radar else None)
    check_replaceable(out, MARKER, "simulate")

    t0 = time.time()
    workers = min(8, os.cpu_count() or 1) if cfg.workers is None else int(cfg.workers)
    pix, labels, params = generate(
        classes, int(cfg.n_per_class), cfg.split, int(cfg.seed), size, radar, workers,
        recordings=fmt == "iq",
    )  # fmt: skip
    recs = None
    if (
        fmt == "iq"
    ):  # the images (for the preview) from the recordings, as data=raw_radar reads them
        recs = pix
        pix = np.stack([quantize(spectrogram(
            r.astype(np.complex128), radar.prf_hz, radar.window_s, radar.wavelength, radar.v_max,
            radar.dynamic_range_db, size)) for r in recs])  # fmt: skip
    elapsed = time.time() - t0
    log.info(
        "simulated %d spectrograms in %.1f s (%.0f / min)",
        len(labels),
        elapsed,
        60 * len(labels) / max(elapsed, 1e-9),
    )
    u8 = to_u8(pix)
    samples = []
    with atomic_dir(out, overwrite=True) as tmp:
        rows = []
        for ci, c in enumerate(classes):
            (tmp / c).mkdir()
            idx = np.flatnonzero(labels == ci)
            for i, k in enumerate(idx):
                if recs is None:
                    name = f"{c}/{c}_{i:05d}.png"
                    (tmp / name).write_bytes(png_bytes(u8[k]))
                else:  # what data=raw_radar reads: I/Q with the parameters that give its axes
                    name = f"{c}/{c}_{i:05d}.npz"
                    np.savez(tmp / name, iq=recs[k], prf_hz=radar.prf_hz,
                             carrier_hz=radar.carrier_hz)  # fmt: skip
                samples.append({"file": name, "class": c, "index": i, "params": params[k]})
            rows.append(u8[idx[: int(cfg.preview_per_class)]])
        preview_grid(rows, classes).save(tmp / "preview.png")
        meta = {
            "writer": MARKER,
            "class_names": classes,
            "image_size": size,
            "seed": int(cfg.seed),
            "split": cfg.split,
            "n_per_class": int(cfg.n_per_class),
            "radar": dataclasses.asdict(radar),
            "format": fmt,
            "pixels": "8-bit grey; value/255 = (dB + D) / D, D = radar.dynamic_range_db; "
            "row 0 = +v_max (approaching), rows linear in radial velocity; columns = time over "
            "duration_s"
            if fmt == "png"
            else "iq: complex64 slow-time I/Q at prf_hz over duration_s + window_s "
            "(read with data=raw_radar)",
            "samples": samples,
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %s", out)
    return out


@report_config_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="simulate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    preflight("simulate", cfg)
    simulate(cfg)


if __name__ == "__main__":
    main()
