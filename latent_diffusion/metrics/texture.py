"""Speckle contrast of the background: does a reconstruction keep the noise texture?

A radar spectrogram's background is receiver noise and clutter seen through a
short-time Fourier transform: its power per cell is close to exponentially
distributed (fully developed speckle), whose contrast std / mean of LINEAR power
is 1; averaging L independent looks gives a gamma law with contrast 1 / sqrt(L)
(Goodman, "Speckle Phenomena in Optics", ch. 3). A VAE that smooths the background
lowers this number, which PSNR barely sees; so it is reported for originals and
reconstructions side by side.

Pixels are dB mapped to [0, 1] over `dynamic_range_db` (value = (dB + D) / D, as
the simulator and the readers store them), so linear power = 10^((u - 1) D / 10).
Signal-free cells: where the locally averaged power is at most `margin_db` above
the image's median (the noise floor: most of a spectrogram is noise), `guard`
cells away from any place above it (the skirts of envelopes and of the
zero-Doppler line), and not at the clip (u = 0, where the dB mapping cut the
value). Clipping removes the
weakest cells, so a background close to the clip reads lower than its true
contrast; originals and reconstructions are measured the same way, so their
ratio is what to read.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_CELLS = 64  # fewer signal-free cells than this: the image's contrast is NaN


def linear_power(unit: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """[0, 1] dB-mapped pixels -> linear power relative to the image's full scale."""
    return 10.0 ** ((np.asarray(unit, np.float64) - 1.0) * dynamic_range_db / 10.0)


def signal_free_mask(
    unit: np.ndarray,
    dynamic_range_db: float,
    margin_db: float = 3.0,
    guard: int = 2,
    window: int = 5,
) -> np.ndarray:
    """unit (N, H, W) in [0, 1] -> bool (N, H, W): background cells (see the module doc).

    Signal is decided on the power averaged over `window` x `window` cells: a single speckle
    cell is often 6 dB above the mean (6 % of an exponential law), but the average of 25 is
    within +-1 dB of it, so only real structure crosses the margin."""
    power = linear_power(unit, dynamic_range_db)  # (N, H, W)
    smooth = ndimage.uniform_filter(power, size=(1, window, window), mode="nearest")
    floor = np.median(smooth.reshape(len(smooth), -1), axis=1)[:, None, None]  # (N, 1, 1)
    signal = smooth > floor * 10.0 ** (margin_db / 10.0)
    if guard > 0:
        signal = ndimage.binary_dilation(
            signal, structure=np.ones((1, 2 * guard + 1, 2 * guard + 1), bool)
        )
    clipped = np.asarray(unit) <= 0.5 / 255  # the dB mapping's floor (8-bit zero)
    return ~signal & ~clipped


def speckle_contrast(
    unit: np.ndarray, dynamic_range_db: float = 45.0, margin_db: float = 3.0, guard: int = 2
) -> np.ndarray:
    """Per image: std / mean of linear power over its signal-free cells, (N,) (NaN when fewer
    than MIN_CELLS cells qualify)."""
    unit = np.asarray(unit, np.float64)
    if unit.ndim == 4:  # (N, 1, H, W)
        unit = unit[:, 0]
    mask = signal_free_mask(unit, dynamic_range_db, margin_db, guard)
    power = linear_power(unit, dynamic_range_db)
    out = np.full(len(unit), np.nan)
    for i in range(len(unit)):
        p = power[i][mask[i]]
        if p.size >= MIN_CELLS:
            out[i] = p.std() / p.mean()
    return out


def contrast_summary(original: np.ndarray, reconstructed: np.ndarray, **kw) -> dict:
    """Median speckle contrast of originals and of their reconstructions, and the ratio."""
    a = speckle_contrast(original, **kw)
    b = speckle_contrast(reconstructed, **kw)
    ma, mb = float(np.nanmedian(a)), float(np.nanmedian(b))
    return {
        "speckle_contrast_original": round(ma, 4),
        "speckle_contrast_reconstruction": round(mb, 4),
        "speckle_contrast_ratio": round(mb / ma, 4) if ma > 0 else float("nan"),
        "speckle_images": int(np.isfinite(a).sum()),
    }


__all__ = [
    "contrast_summary",
    "linear_power",
    "signal_free_mask",
    "speckle_contrast",
]
