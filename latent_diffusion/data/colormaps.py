"""Colour maps and their inversion: a jet/parula/viridis figure back to the scalar it encodes.

Real micro-Doppler data sets are often published as colour-mapped figures
(DIAT-muRadHAR: jet JPEGs; CI4R: jet PNGs). The network wants the scalar
(normalised dB) the colours encode. Averaging RGB is wrong: jet's two ends,
dark blue (0, 0, 0.5) and dark red (0.5, 0, 0), average to the same grey, so
the strongest and the weakest returns become one value. Instead every pixel
is matched to the nearest entry of the colour map (Euclidean distance in
8-bit RGB) and replaced by that entry's position in [0, 1]; of several
candidate maps the one with the lowest (truncated) mean residual wins, and
pixels far from every entry (white background, black axes and text) are
masked. A colour bar *is* on the colour map, so residuals cannot mask it;
it is a separate blob beside the plot, so only the largest connected
component of well-matched pixels is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from scipy import ndimage

from latent_diffusion.utils.errors import UserError

N_ENTRIES = 256

# viridis (van der Walt & Smith 2015; matplotlib `_cm_listed._viridis_data`,
# CC0): every 8th of its 256 entries plus the last; linear interpolation of
# these anchors reproduces the full table to < 0.2 % (the map is smooth by design).
_VIRIDIS_IDX = list(range(0, 256, 8)) + [255]
_VIRIDIS_ANCHORS = [
    (0.267004, 0.004874, 0.329415),
    (0.277018, 0.050344, 0.375715),
    (0.282327, 0.094955, 0.417331),
    (0.282884, 0.135920, 0.453427),
    (0.278826, 0.175490, 0.483397),
    (0.270595, 0.214069, 0.507052),
    (0.258965, 0.251537, 0.524736),
    (0.244972, 0.287675, 0.537260),
    (0.229739, 0.322361, 0.545706),
    (0.214298, 0.355619, 0.551184),
    (0.199430, 0.387607, 0.554642),
    (0.185556, 0.418570, 0.556753),
    (0.172719, 0.448791, 0.557885),
    (0.160665, 0.478540, 0.558115),
    (0.149039, 0.508051, 0.557250),
    (0.137770, 0.537492, 0.554906),
    (0.127568, 0.566949, 0.550556),
    (0.120565, 0.596422, 0.543611),
    (0.120638, 0.625828, 0.533488),
    (0.132268, 0.655014, 0.519661),
    (0.157851, 0.683765, 0.501686),
    (0.196571, 0.711827, 0.479221),
    (0.246070, 0.738910, 0.452024),
    (0.304148, 0.764704, 0.419943),
    (0.369214, 0.788888, 0.382914),
    (0.440137, 0.811138, 0.340967),
    (0.515992, 0.831158, 0.294279),
    (0.595839, 0.848717, 0.243329),
    (0.678489, 0.863742, 0.189503),
    (0.762373, 0.876424, 0.137064),
    (0.845561, 0.887322, 0.099702),
    (0.926106, 0.897330, 0.104071),
    (0.993248, 0.906157, 0.143936),
]

# parula (MATLAB R2014b default): the 64-entry approximation published with
# BIDS/colormap (parula.py), every 2nd entry plus the last.
_PARULA_IDX = list(range(0, 64, 2)) + [63]
_PARULA_ANCHORS = [
    (0.2081, 0.1663, 0.5292),
    (0.2123, 0.2138, 0.6270),
    (0.1959, 0.2645, 0.7279),
    (0.1253, 0.3242, 0.8303),
    (0.0117, 0.3875, 0.8820),
    (0.0165, 0.4266, 0.8786),
    (0.0498, 0.4586, 0.8641),
    (0.0723, 0.4887, 0.8467),
    (0.0793, 0.5200, 0.8312),
    (0.0641, 0.5570, 0.8240),
    (0.0343, 0.5966, 0.8199),
    (0.0239, 0.6287, 0.8038),
    (0.0228, 0.6535, 0.7768),
    (0.0384, 0.6743, 0.7436),
    (0.0843, 0.6928, 0.7062),
    (0.1453, 0.7098, 0.6646),
    (0.2178, 0.7250, 0.6193),
    (0.3022, 0.7376, 0.5712),
    (0.3953, 0.7459, 0.5244),
    (0.4871, 0.7491, 0.4840),
    (0.5709, 0.7485, 0.4494),
    (0.6473, 0.7456, 0.4164),
    (0.7184, 0.7411, 0.3844),
    (0.7858, 0.7356, 0.3529),
    (0.8507, 0.7299, 0.3219),
    (0.9139, 0.7258, 0.2906),
    (0.9739, 0.7314, 0.2574),
    (0.9990, 0.7653, 0.2224),
    (0.9880, 0.8066, 0.1908),
    (0.9697, 0.8481, 0.1633),
    (0.9589, 0.8949, 0.1353),
    (0.9661, 0.9514, 0.1050),
    (0.9763, 0.9831, 0.0856),
]


def _interp_anchors(positions: np.ndarray, anchors, n: int) -> np.ndarray:
    """Piecewise-linear RGB through anchors at `positions` in [0, 1] -> (n, 3)."""
    a = np.asarray(anchors, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, positions, a[:, c]) for c in range(3)], axis=1)


def jet(n: int = N_ENTRIES) -> np.ndarray:
    """MATLAB's jet(n) as (n, 3) floats in [0, 1].

    MATLAB builds it from one ramp u = [1/q .. 1, 1 .. 1, 1 .. 1/q] (q = ceil(n/4))
    placed at three offsets: blue starts dark (0.5) at the bottom, red ends dark
    at the top, green peaks in the middle. This is that construction, 0-based.
    """
    q = -(-n // 4)
    u = np.concatenate([np.arange(1, q + 1) / q, np.ones(q - 1), np.arange(q, 0, -1) / q])
    g = -(-q // 2) - int(n % 4 == 1) + np.arange(len(u))  # 0-based start of green
    r, b = g + q, g - q
    out = np.zeros((n, 3))
    for ch, idx in ((0, r), (1, g), (2, b)):
        keep = (idx >= 0) & (idx < n)
        out[idx[keep], ch] = u[keep]
    return out


def parula(n: int = N_ENTRIES) -> np.ndarray:
    return _interp_anchors(np.asarray(_PARULA_IDX) / 63.0, _PARULA_ANCHORS, n)


def viridis(n: int = N_ENTRIES) -> np.ndarray:
    return _interp_anchors(np.asarray(_VIRIDIS_IDX) / 255.0, _VIRIDIS_ANCHORS, n)


COLORMAPS = {"jet": jet, "parula": parula, "viridis": viridis}


@cache
def colormap_table(name: str, n: int = N_ENTRIES) -> np.ndarray:
    """(n, 3) float64 table in 8-bit RGB units (0..255)."""
    if name not in COLORMAPS:
        raise UserError(f"unknown colour map '{name}'; choose from {sorted(COLORMAPS)}")
    return COLORMAPS[name](n) * 255.0


def apply_colormap(x: np.ndarray, name: str = "jet") -> np.ndarray:
    """Scalar (H, W) in [0, 1] -> uint8 RGB (H, W, 3), nearest of 256 entries (how plots render)."""
    idx = np.clip(np.rint(np.asarray(x, dtype=np.float64) * (N_ENTRIES - 1)), 0, N_ENTRIES - 1)
    return np.rint(colormap_table(name)[idx.astype(np.int64)]).astype(np.uint8)


def is_grey(rgb: np.ndarray, tol: int = 4, min_fraction: float = 0.995) -> bool:
    """True when (almost) every pixel has R == G == B within `tol` (JPEG chroma noise).

    A grey image carries the scalar in any one channel; a colour map never has
    R == G == B over a whole image (jet/parula/viridis have no grey entries).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return True
    c = rgb[..., :3].astype(np.int16)
    spread = c.max(axis=-1) - c.min(axis=-1)
    return bool((spread <= tol).mean() >= min_fraction)


# RGB -> (Y, Cb, Cr) of JPEG (ITU-R BT.601), chroma weighted down for the nearest-entry search:
# JPEG keeps luma at full resolution and halves chroma in both directions (4:2:0), quantising
# it more coarsely, so a pixel's luma is the better witness of its value. Weight 0.3 measured
# best on rendered jet / parula / viridis figures at JPEG q75-95 (docs/data.md); exact
# (PNG) colours have distance 0 to their entry either way.
CHROMA_WEIGHT = 0.3
OFF_MAP_CHROMA = 16  # max(R,G,B) - min(R,G,B) at or above which a far pixel still counts as data
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_W = _YCC * np.array([[1.0], [CHROMA_WEIGHT], [CHROMA_WEIGHT]])


def nearest_entry(colors: np.ndarray, name: str, chunk: int = 8192):
    """For (U, 3) colours in 0..255: index of the nearest entry of map `name` (in luma-weighted
    YCbCr) and its RGB distance (0..255 units, what max_residual is in)."""
    table = colormap_table(name)
    t32 = (table @ _YCC_W.T).astype(np.float32)
    m2t = -2.0 * t32.T  # (3, E)
    t2 = (t32**2).sum(1)  # (E,)
    c32 = (colors @ _YCC_W.T).astype(np.float32)
    idx = np.empty(len(colors), dtype=np.int64)
    for s in range(0, len(colors), chunk):
        # |c - t|^2 - |c|^2 = |t|^2 - 2 c.t: the argmin needs no |c|^2; float32 and
        # chunks of 8192 x 256 keep it fast and ~8 MB (exact 8-bit inputs, no cube)
        d = c32[s : s + chunk] @ m2t  # (u, E)
        d += t2
        idx[s : s + chunk] = d.argmin(1)
    dist = np.sqrt(((table[idx] - colors) ** 2).sum(1))
    return idx, dist


def invert_colormap(
    rgb: np.ndarray,
    names: Sequence[str] = ("jet", "parula", "viridis"),
    max_residual: float = 40.0,
    keep_largest: bool = True,
    fill: bool = True,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Colour-mapped uint8 RGB (H, W, 3) -> (scalar float32 (H, W) in [0, 1], valid bool (H, W), map
    name).

    max_residual: Euclidean RGB distance (0..255 units) above which a pixel is
      not on the map (white is >= 180 from every jet entry, black >= 108 from
      viridis; JPEG q=90 noise on a smooth plot stays well below 40).
    keep_largest: keep only the largest 8-connected blob of valid pixels (the
      plot), which drops the colour bar and stray text that happens to match.
    fill: masked pixels get the value of the nearest valid pixel (so a crop of
      the plot has no holes); `valid` tells which ones were filled.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    # Unique colours only: a figure has far fewer colours than pixels.
    packed = (
        (rgb[..., 0].astype(np.uint32) << 16)
        | (rgb[..., 1].astype(np.uint32) << 8)
        | rgb[..., 2].astype(np.uint32)
    )
    uniq, inverse = np.unique(packed.ravel(), return_inverse=True)
    colors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], 1).astype(np.float64)

    # Choose the map on at most 20k pixels (a fixed subsample: deterministic),
    # scored by the truncated mean residual: background pixels cost the same
    # for every map, so the plot pixels decide.
    sample = inverse if inverse.size <= 20000 else inverse[:: inverse.size // 20000 + 1]
    sub, sub_inv = np.unique(sample, return_inverse=True)
    scores = {}
    for name in names:
        _, d = nearest_entry(colors[sub], name)
        scores[name] = float(np.minimum(d, max_residual)[sub_inv].mean())
    name = min(names, key=lambda n: scores[n])
    idx, dist = nearest_entry(colors, name)
    scalar = (idx[inverse] / (N_ENTRIES - 1)).reshape(h, w).astype(np.float32)
    # Off the map: far from every entry AND grey. What sits inside a plot without being data
    # (grid lines, annotations, ticks, the margin) is grey; a data pixel that JPEG pushed far
    # from the map (a thin saturated line whose 4:2:0 chroma was averaged with its
    # neighbours) keeps much of its colour, and its luma-weighted nearest entry is the better
    # guess than a neighbour's value.
    chroma = (colors.max(1) - colors.min(1))[inverse]
    valid = ((dist[inverse] <= max_residual) | (chroma >= OFF_MAP_CHROMA)).reshape(h, w)
    if not valid.any():
        raise UserError(
            f"no pixel lies within {max_residual} of the {list(names)} colour maps: "
            "not a colour-mapped spectrogram (save it as grey, or add its colour map)"
        )
    if keep_largest:
        labels, n = ndimage.label(valid, structure=np.ones((3, 3), bool))
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            valid = labels == (1 + int(sizes.argmax()))
    if fill and not valid.all():
        # indices of the nearest valid pixel for every pixel (exact Euclidean EDT)
        _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
        scalar = scalar[iy, ix]
    return scalar, valid, name
