"""Pixel conventions, in one place.

Inside the package an image is a float tensor (B, C, H, W) in [-1, 1]. On disk and
in `samples.npz` it is 8-bit: (B, H, W, C) uint8 with value = round((x + 1) * 127.5).
Metrics compare real and generated images on that same 8-bit grid, so bit depth is
never a difference between them.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, the package's export convention."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in [-1, 1] (the inverse of to_uint8)."""
    x = torch.as_tensor(np.asarray(images)).float() / 127.5 - 1.0
    return x.permute(0, 3, 1, 2).contiguous()


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> the same, rounded to the 8-bit grid a PNG would store."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: PSNR / SSIM and diffusers' "np" / "pt" outputs use the [0, 1] image."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def png_bytes(img: np.ndarray | Image.Image) -> bytes:
    """A PIL image, or (H, W, C) / (H, W) uint8 -> PNG bytes: 8-bit grey for one channel (the
    readers' convention), RGB / RGBA for 3 / 4."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["from_uint8", "png_bytes", "quantize_8bit", "to_uint8", "to_unit"]
