"""Inference switches of the pipeline: bf16 autocast, channels_last, torch.compile.

Sampling cost is denoiser forwards (2 per step with classifier-free guidance),
so these act on the denoiser only; the VAE decodes in fp32 as everywhere else
(FrozenVAE disables autocast: its output is the image).

bf16 is a speed switch only where the hardware has bf16 arithmetic: CUDA devices
that report it, and CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates
bf16 and the same forward is several times slower (docs/benchmarks.md: 0.12x of
fp32 for a training step on this project's AVX2 CI machine), so `auto` picks fp32
there and an explicit `bf16` falls back to fp32 with one warning.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch

from latent_diffusion.utils.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of bf16 arithmetic


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 arithmetic flags this CPU reports (Linux /proc/cpuinfo; () elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False  # mps and others: not measured here


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """("fp32" | "bf16", a note to log when the request was changed or chosen)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    ok = bf16_supported(device)
    if precision == "fp32":
        return "fp32", None
    hardware = (
        f"{device.type} with {', '.join(cpu_bf16_flags())}"
        if device.type == "cpu" and ok
        else (
            f"{device.type} without bf16 arithmetic"
            + (" (no AVX512-BF16 / AMX in /proc/cpuinfo)" if device.type == "cpu" else "")
        )
    )
    if precision == "auto":
        chosen = "bf16" if ok else "fp32"
        return chosen, f"precision=auto: {chosen} ({hardware})"
    if not ok:
        return "fp32", (
            f"precision=bf16: {hardware}; emulated bf16 is slower than fp32, so sampling "
            "runs in fp32 (precision=fp32 silences this)"
        )
    return "bf16", None


def autocast_model_fn(fn, device: torch.device, dtype: torch.dtype | None):
    """fn(x_t, t) under autocast to `dtype`, returned as fp32 (the sampler's arithmetic and
    the per-image noise stay fp32); None returns fn unchanged."""
    if dtype is None:
        return fn

    def wrapped(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            out = fn(x_t, t)  # (B, C|2C, h, w) in dtype
        return out.float()

    return wrapped


def set_channels_last(denoiser) -> bool:
    """NHWC weights and inputs for a UNet (faster convolutions on CPUs with oneDNN and on
    tensor cores); a DiT has no convolutions to speed up. Returns whether it applied."""
    if not hasattr(denoiser, "channels_last"):
        return False
    denoiser.channels_last = True  # forward() converts its input
    denoiser.to(memory_format=torch.channels_last)
    return True


__all__ = [
    "PRECISIONS",
    "autocast_model_fn",
    "bf16_supported",
    "cpu_bf16_flags",
    "resolve_precision",
    "set_channels_last",
]
