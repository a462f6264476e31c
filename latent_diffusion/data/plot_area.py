"""The plot area of a figure, found from the figure's geometry, never from its data.

A spectrogram saved by a plotting library is a picture of a plot: a margin, an
axes frame with ticks and tick labels, a title, often a colour bar beside it. The
data inside can be anything: a saturated zero-Doppler line, dark noise, a
signature touching the frame. So the plot box is found from what every such
figure shares:

1. the axes frame: the largest rectangle whose four sides are long, thin,
   near-black, unsaturated lines (data colours of jet / parula / viridis are
   saturated or bright, JPEG noise moves them by far less than the threshold);
2. without a frame (spines hidden): the largest block of pixels that differ from
   the margin colour, taken as a rectangle (the colour bar and text are smaller).

The box returned is the inside of the frame: (top, left, height, width) in pixels.
`data.plot_box=[top, left, height, width]` gives it explicitly for figures where
neither rule holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from latent_diffusion.utils.errors import UserError

# a frame pixel: dark and grey. Jet's darkest blue (0, 0, 143) and dark red (128, 0, 0),
# parula's (53, 42, 135) and viridis' (68, 1, 84) are all far more saturated than this.
DARK_MAX = 110  # max(R, G, B) of a frame pixel (anti-aliasing and JPEG lighten a black line)
GREY_SPAN = 60  # max(R, G, B) - min(R, G, B) of a frame pixel
MIN_SIDE = 0.2  # a frame side spans at least this share of the figure's height / width
SIDE_COVER = 0.8  # share of a side's pixels that must be frame pixels


CORE_LUMA = 24  # luma of the frame's core: black after JPEG; viridis' darkest entry has 30


def frame_pixels(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: near-black, unsaturated pixels."""
    c = rgb.astype(np.int16)
    hi, lo = c.max(-1), c.min(-1)
    # or very dark whatever its hue: JPEG lends a black line next to dark-blue data its colour
    return ((hi <= DARK_MAX) & (hi - lo <= GREY_SPAN)) | (_luma(rgb) <= 12)


def _luma(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float32)
    return 0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]


def core_pixels(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: the black core of a frame line. JPEG's 4:2:0 chroma halves the colour of a
    data pixel next to the frame (viridis' dark purple turns grey), but keeps its luma."""
    c = rgb.astype(np.int16)
    return (_luma(rgb) <= CORE_LUMA) & (c.max(-1) - c.min(-1) <= GREY_SPAN)


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] of the True runs of a 1-D bool array."""
    d = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def _lines(mask: np.ndarray, min_len: int) -> list[tuple[int, int, int, int]]:
    """Horizontal lines of `mask`: [(first row, last row, start col, stop col)], adjacent rows with
    overlapping long runs merged (a frame side is 1-3 px thick)."""
    segs = []
    for r in range(mask.shape[0]):
        for a, b in _runs(mask[r]):
            if b - a >= min_len:
                segs.append([r, r, a, b])
    merged: list[list[int]] = []
    for s in segs:
        for m in merged:
            if s[0] == m[1] + 1 and abs(s[2] - m[2]) <= 3 and abs(s[3] - m[3]) <= 3:
                m[1], m[2], m[3] = s[0], min(m[2], s[2]), max(m[3], s[3])
                break
        else:
            merged.append(list(s))
    return [tuple(m) for m in merged]


def find_frame(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The inside of the largest axes frame, (top, left, height, width), or None."""
    mask = frame_pixels(rgb)
    # close 1-2 px gaps along each line (JPEG ringing, tick marks crossing it)
    h_mask = ndimage.binary_closing(mask, structure=np.ones((1, 5), bool))
    w = mask.shape[1]
    min_len = max(8, int(MIN_SIDE * w))
    horiz = _lines(h_mask, min_len)
    best, best_area = None, 0
    for i, top in enumerate(horiz):
        for bot in horiz[i + 1 :]:
            if bot[0] - top[1] < 8:
                continue
            left, right = max(top[2], bot[2]), min(top[3], bot[3]) - 1
            if right - left < min_len:
                continue
            # the vertical sides: the outermost columns near the lines' ends that run dark from
            # the top line to the bottom one (a tick at a corner can lengthen a line by its size)
            rows = slice(top[1] + 1, bot[0])
            lc = _side(mask, rows, range(left, min(left + 16, right)))
            rc = _side(mask, rows, range(right, max(right - 16, left), -1))
            if lc is None or rc is None or rc - lc < 8:
                continue
            area = (bot[0] - top[1]) * (rc - lc)
            if area > best_area:
                best, best_area = (top, bot, lc, rc), area
    if best is None:
        return None
    top, bot, lc, rc = best
    # The inside starts past the frame's black core, whatever its thickness (1-3 px): from each
    # side's outer edge, step over the rows / columns that are mostly core. The lenient mask
    # that found the lines also takes the data row next to a line (JPEG greys its colour).
    core = core_pixels(rgb)
    cols = slice(lc, rc + 1)
    r0 = _past_core([core[r, cols].mean() for r in range(top[0], bot[0])], top[0], +1, top[1] + 1)
    r1 = (
        _past_core([core[r, cols].mean() for r in range(bot[1], r0, -1)], bot[1], -1, bot[0] - 1)
        + 1
    )
    c0 = _past_core([core[r0:r1, c].mean() for c in range(lc, rc)], lc, +1, lc + 1)
    c1 = _past_core([core[r0:r1, c].mean() for c in range(rc, c0, -1)], rc, -1, rc - 1) + 1
    if r1 - r0 < 8 or c1 - c0 < 8:
        return None
    return int(r0), int(c0), int(r1 - r0), int(c1 - c0)


def _past_core(fractions: list[float], start: int, step: int, fallback: int) -> int:
    """The first index (start + step * k) past the first run of mostly-core lines; `fallback`
    (past the line as the lenient mask saw it) for a frame without a black core (grey spines)."""
    k = 0
    while k < min(3, len(fractions)) and fractions[k] <= 0.5:  # lenient-only lines outside
        k += 1
    if k == min(3, len(fractions)):
        return fallback
    while k < len(fractions) and fractions[k] > 0.5:
        k += 1
    return start + step * k


def _side(mask: np.ndarray, rows: slice, cols) -> int | None:
    """The first column of `cols` that is dark over SIDE_COVER of `rows` (a frame side)."""
    for c in cols:
        if mask[rows, c].mean() >= SIDE_COVER:
            return c
    return None


def margin_colour(rgb: np.ndarray) -> np.ndarray | None:
    """The figure's margin colour, (3,) uint8: the commonest colour of its outermost pixel ring
    when that is grey (white, grey, black) and covers most of the ring; None when the ring is
    data (a bare colour-mapped array saved as an image has no margin)."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    grey = ring.max(1) - ring.min(1) <= 12
    if grey.mean() < 0.5:
        return None
    q = ring[grey] // 8  # JPEG moves a flat margin by a few levels
    packed = (q[:, 0] << 10) | (q[:, 1] << 5) | q[:, 2]
    vals, counts = np.unique(packed, return_counts=True)
    v = int(vals[counts.argmax()])
    return (np.array([(v >> 10) & 31, (v >> 5) & 31, v & 31]) * 8 + 4).astype(np.uint8)


def find_block(rgb: np.ndarray, tol: int = 48) -> tuple[int, int, int, int] | None:
    """Without a frame: the bounding box of the largest 4-connected region of pixels that
    differ from the margin colour by more than `tol`, or None when the image has no margin."""
    bg = margin_colour(rgb)
    if bg is None:
        return None
    bg = bg.astype(np.int16)
    differs = np.abs(rgb.astype(np.int16) - bg).max(-1) > tol
    if differs.all() or not differs.any():
        return None
    # an opening drops 1-2 px wide structures attached to the plot (ticks, a thin grid)
    differs = ndimage.binary_opening(differs, structure=np.ones((3, 3), bool))
    if not differs.any():
        return None
    labels, n = ndimage.label(differs)
    sizes = np.bincount(labels.ravel())[1:]
    k = 1 + int(sizes.argmax())
    ys, xs = np.nonzero(labels == k)
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def plot_box(
    rgb: np.ndarray, given: Sequence[int] | None = None, path=None
) -> tuple[tuple[int, int, int, int], str]:
    """-> ((top, left, height, width), how) with how in {"given", "frame", "margin", "whole"}.

    "whole": the figure has no margin and no frame (a bare colour-mapped array saved as an
    image): the whole image is the plot."""
    h, w = rgb.shape[:2]
    if given is not None:
        t, left, bh, bw = (int(v) for v in given)
        if t < 0 or left < 0 or bh < 2 or bw < 2 or t + bh > h or left + bw > w:
            raise UserError(
                f"data.plot_box={list(given)} does not fit {path or 'the figure'} ({h}x{w} px): "
                "give [top, left, height, width] inside the image"
            )
        return (t, left, bh, bw), "given"
    frame = find_frame(rgb)
    if frame is not None:
        return frame, "frame"
    block = find_block(rgb)
    if block is None:
        return (0, 0, h, w), "whole"
    if block[2] < 8 or block[3] < 8:
        raise UserError(
            f"{path or 'figure'}: no plot area found (no axes frame, and no block of data "
            "larger than 8x8 px inside the margin); give it as data.plot_box=[top, left, height, "
            "width] in pixels, or set data.crop_to_plot=false for a bare image"
        )
    return block, "margin"


def crop_sizes_report(boxes: dict[str, tuple[int, int, int, int]], tol: float = 0.02):
    """Per data set: (the majority (height, width), [files whose size differs],
    [files whose aspect ratio differs by more than `tol`: a resize would distort them])."""
    sizes = {f: (b[2], b[3]) for f, b in boxes.items()}
    if not sizes:
        return None, [], []
    vals, counts = np.unique(np.array(list(sizes.values())), axis=0, return_counts=True)
    major = tuple(int(v) for v in vals[counts.argmax()])
    differ = sorted(f for f, s in sizes.items() if s != major)
    aspect = major[1] / major[0]
    distort = sorted(f for f in differ if abs(sizes[f][1] / sizes[f][0] / aspect - 1) > tol)
    return major, differ, distort


__all__ = ["crop_sizes_report", "find_block", "find_frame", "frame_pixels", "plot_box"]
