"""Denoiser factories: ADM-style UNet (diffusers UNet2DModel) and DiT (diffusers
DiTTransformer2DModel).

Every denoiser has the same call: `model(x (B,C,H,W), t (B,) long, y (B,) long | None)
-> (B, C_out, H, W)`, C_out = 2C with a learned variance. Each owns its null class
(`model.null_class == num_classes`) and drops labels to it with probability
`p_uncond` in training mode only, for classifier-free guidance.

Sizes differ only in numbers, so one code path is tested for all: `MODELS` maps a size name to
the architecture numbers, the way DiT's `DiT_models` does, and conf/model/<name>.yaml
spells the same numbers out so Hydra can print and override them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from latent_diffusion.models.unet import ADMUNet, ConditionalDenoiser, LabelDropout, drop_labels
from latent_diffusion.utils.errors import UserError

# ----------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------

# attention_resolutions are feature-map side lengths (ADM's command line), head_dim
# is ADM's num_head_channels. The comments give the target latent size.
MODELS: dict[str, dict[str, Any]] = {
    # CPU smoke tests and CI, 4x16x16 latents: one level of attention at 8x8.
    "tiny": dict(
        arch="adm_unet",
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        head_dim=32,
        dropout=0.0,
        p_uncond=0.1,
    ),
    # The user's microdoppler_small, 4x16x16 latents (64x64 spectrograms).
    "small": dict(
        arch="adm_unet",
        base_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        head_dim=64,
        dropout=0.1,
        p_uncond=0.1,
    ),
    # GPU scale, 4x32x32 latents (128x128 spectrograms): ADM-64's widths.
    "base": dict(
        arch="adm_unet",
        base_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        attention_resolutions=(16, 8, 4),
        head_dim=64,
        dropout=0.1,
        p_uncond=0.1,
    ),
    # DiT-S/2 (Peebles & Xie 2023): the transformer alternative, ~35M parameters.
    "dit_s": dict(
        arch="dit",
        hidden_size=384,
        depth=12,
        head_dim=64,
        patch_size=2,
        dropout=0.0,
        p_uncond=0.1,
    ),
}


def build_denoiser(
    arch: str = "adm_unet",
    name: str | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    sample_size: int | None = None,
    learn_sigma: bool | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """Hydra target of conf/model/*.yaml. `name` only labels the size in logs."""
    given = dict(
        in_channels=in_channels,
        num_classes=num_classes,
        sample_size=sample_size,
        learn_sigma=learn_sigma,
    )
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(
            f"model config{f' {name!r}' if name else ''}: "
            f"{', '.join('model.' + k for k in missing)} "
            f"not set; the training code fills them from the VAE, data and diffusion configs, "
            f"or pass them as overrides (e.g. model.in_channels=4)"
        )
    if arch == "adm_unet":
        return ADMUNet(**given, **arch_kwargs)
    if arch == "dit":
        from latent_diffusion.models.dit import DiT  # diffusers' DiT import is slowish

        return DiT(**given, **arch_kwargs)
    raise UserError(f"model.arch={arch!r} is unknown; use 'adm_unet' or 'dit'")


def create_model(size: str, **kwargs: Any) -> nn.Module:
    """Registry access by size name: create_model("tiny", in_channels=4, num_classes=8, ...)."""
    if size not in MODELS:
        raise UserError(f"model size {size!r} is unknown; choose one of {sorted(MODELS)}")
    return build_denoiser(name=size, **{**MODELS[size], **kwargs})


__all__ = [
    "ADMUNet",
    "ConditionalDenoiser",
    "LabelDropout",
    "drop_labels",
    "MODELS",
    "build_denoiser",
    "create_model",
]
