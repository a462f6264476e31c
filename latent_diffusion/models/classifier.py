"""Noise-aware latent classifier for classifier guidance: guided-diffusion's EncoderUNetModel.

Dhariwal & Nichol (2021) guide with a classifier p(y | x_t) trained on noisy inputs at
every timestep: the downsampling half of the ADM UNet (the same residual blocks with
AdaGN timestep conditioning, attention at the same feature-map sizes, the middle block),
then GroupNorm -> SiLU -> attention pooling (CLIP's AttentionPool2d: the mean feature
attends over every position) -> logits. Here the half is taken from our own ADMUNet
(models/unet.py), so the classifier's blocks are the denoiser's, with the same
geometry checks; only its up path, class embedding and output conv are dropped.

forward(x_t (B, C, h, w), t (B,) original timesteps) -> logits (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.models.unet import ADMUNet
from latent_diffusion.utils.errors import UserError

# Sizes by name, as models.MODELS; conf/classifier_model/<name>.yaml spells the same numbers out.
CLASSIFIERS: dict[str, dict[str, Any]] = {
    # CI and CPU runs on 4x16x16 latents
    "tiny": dict(
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        head_dim=32,
        dropout=0.1,
    ),
    # guided-diffusion's 64x64 classifier is width 128, depth 4 on ImageNet; our latents are 16x16
    "small": dict(
        base_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        head_dim=64,
        dropout=0.1,
    ),
}


class AttentionPool2d(nn.Module):
    """CLIP / guided-diffusion attention pooling: (B, C, H, W) -> (B, out_dim).

    The spatial mean is prepended as a query token; after one multi-head self-attention
    over [mean, positions] (+ a learned positional embedding) the mean token's output is
    the pooled feature. Unlike a plain mean it can weigh where in the spectrogram the
    class evidence is (e.g. the Doppler band a limb swings through)."""

    def __init__(self, spatial: int, dim: int, head_dim: int, out_dim: int):
        super().__init__()
        if dim % head_dim:
            raise UserError(
                f"classifier: {dim} channels at the pooling layer is not a multiple of "
                f"head_dim={head_dim}"
            )
        self.positional_embedding = nn.Parameter(torch.randn(dim, spatial * spatial + 1) / dim**0.5)
        self.qkv = nn.Conv1d(dim, 3 * dim, 1)
        self.proj = nn.Conv1d(dim, out_dim, 1)
        self.heads = dim // head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w)  # (B, C, HW)
        x = torch.cat([x.mean(-1, keepdim=True), x], -1) + self.positional_embedding.to(
            x.dtype
        )  # (B, C, HW+1)
        q, k, v = (
            self.qkv(x).reshape(b, 3, self.heads, c // self.heads, -1).transpose(-1, -2).unbind(1)
        )
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW+1, C/heads)
        a = a.transpose(-1, -2).reshape(b, c, -1)  # (B, C, HW+1)
        return self.proj(a)[:, :, 0]  # (B, out_dim): the mean token


class NoisyLatentClassifier(nn.Module):
    """Encoder half of the ADM UNet + attention pooling: logits of p(y | x_t, t)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        sample_size: int,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8, 4),
        head_dim: int = 64,
        dropout: float = 0.1,
        norm_groups: int = 32,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        # Everything build_classifier needs to rebuild it (the export's classifier.json).
        self.classifier_config = dict(
            in_channels=int(in_channels),
            num_classes=int(num_classes),
            sample_size=int(sample_size),
            base_channels=int(base_channels),
            channel_mult=list(channel_mult),
            num_res_blocks=int(num_res_blocks),
            attention_resolutions=[int(r) for r in attention_resolutions],
            head_dim=int(head_dim),
            dropout=float(dropout),
            norm_groups=int(norm_groups),
        )
        if num_classes < 2:
            raise UserError(
                f"classifier: num_classes={num_classes}; guidance needs at least two classes"
            )
        unet = ADMUNet(
            in_channels,
            num_classes,
            sample_size,
            learn_sigma=False,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            head_dim=head_dim,
            dropout=dropout,
            p_uncond=0.0,
            norm_groups=norm_groups,
        ).unet
        # the denoiser's own encoder half; the rest of `unet` is dropped with it
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.conv_in, self.down_blocks, self.mid_block = (
            unet.conv_in,
            unet.down_blocks,
            unet.mid_block,
        )
        ch = base_channels * channel_mult[-1]
        last = sample_size // 2 ** (len(channel_mult) - 1)
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch),
            nn.SiLU(),
            AttentionPool2d(last, ch, head_dim, num_classes),
        )
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.sample_size = int(sample_size)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) noisy latents, t (B,) timesteps of the training process -> (B, K)
        logits."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))  # (B, 4 * base)
        h = self.conv_in(x)  # (B, base, h, w)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)  # halves h, w except at the last level
        h = self.mid_block(h, emb)  # (B, base * mult[-1], h', w')
        return self.out(h)


def build_classifier(name: str | None = None, **kwargs: Any) -> NoisyLatentClassifier:
    """Hydra target of conf/classifier/*.yaml; `name` only labels the size in logs."""
    missing = [k for k in ("in_channels", "num_classes", "sample_size") if kwargs.get(k) is None]
    if missing:
        raise UserError(
            f"classifier config{f' {name!r}' if name else ''}: "
            f"{', '.join('classifier.' + k for k in missing)} not set; train_classifier fills "
            "them from the VAE and the data"
        )
    return NoisyLatentClassifier(**kwargs)
