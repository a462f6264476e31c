"""Sample grids: one row per class, labelled, as a PIL image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def class_grid(
    images: np.ndarray, labels: list[str], n_cols: int, label_width: int = 64, pad: int = 2
) -> Image.Image:
    """images (rows*n_cols, H, W, C) uint8, row-major by class -> labelled grid image."""
    n, h, w, c = images.shape
    rows = n // n_cols
    grid = np.full(
        (rows * (h + pad) + pad, label_width + n_cols * (w + pad) + pad, c), 255, np.uint8
    )
    for i in range(rows * n_cols):
        r, k = divmod(i, n_cols)
        y0, x0 = pad + r * (h + pad), label_width + pad + k * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(labels):
        draw.text((2, pad + r * (h + pad) + h // 2 - 5), name[:10], fill=0)
    return img
