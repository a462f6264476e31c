"""DiT denoiser (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023)
on diffusers' `DiTTransformer2DModel`, with the same call as the ADM UNet.

Two corrections to the diffusers port, both about how it stores conditioning:

- diffusers gives every transformer block its own timestep + label embedder
  (`block.norm1.emb`), each with its own `LabelEmbedding` that drops labels in
  training mode. Left on, every block would draw its own drop, so one sample
  would be conditional in some blocks and unconditional in others. We switch
  those off and drop once, before the blocks, with the same `LabelDropout` as
  the UNet (the null class is row num_classes of each table, which diffusers
  allocates when dropout_prob > 0 at construction).
- DiT initialises adaLN-Zero: the modulation layers and the final linear layer
  start at zero, so every block starts as the identity and the first
  prediction is 0 (DiT section 3.2, "adaLN-Zero block"). diffusers does not;
  we do.

Attention runs through diffusers' default SDPA processor.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from latent_diffusion.models.unet import ConditionalDenoiser
from latent_diffusion.utils.errors import UserError


class DiT(ConditionalDenoiser):
    """forward(x (B,C,H,W), t (B,) long, y (B,) long | None) -> (B, C_out, H, W)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        sample_size: int,
        learn_sigma: bool = True,
        hidden_size: int = 384,  # DiT-S
        depth: int = 12,
        head_dim: int = 64,
        patch_size: int = 2,
        dropout: float = 0.0,
        p_uncond: float = 0.1,
    ):
        super().__init__()
        # Everything build_denoiser needs to rebuild this architecture (exports, `sample`).
        self.denoiser_config = dict(
            arch="dit",
            in_channels=in_channels,
            num_classes=num_classes,
            sample_size=sample_size,
            learn_sigma=learn_sigma,
            hidden_size=hidden_size,
            depth=depth,
            head_dim=head_dim,
            patch_size=patch_size,
            dropout=dropout,
            p_uncond=p_uncond,
        )
        if hidden_size % head_dim:
            raise UserError(
                f"model.hidden_size={hidden_size} is not a multiple of model.head_dim={head_dim}"
            )
        if sample_size % patch_size:
            raise UserError(
                f"sample_size={sample_size} is not divisible by model.patch_size={patch_size}"
            )
        self._init_conditioning(in_channels, num_classes, learn_sigma, p_uncond)
        self.dit = DiTTransformer2DModel(
            num_attention_heads=hidden_size // head_dim,
            attention_head_dim=head_dim,
            in_channels=in_channels,
            out_channels=self.out_channels,
            num_layers=depth,
            dropout=dropout,
            sample_size=sample_size,
            patch_size=patch_size,
            num_embeds_ada_norm=num_classes,  # + 1 null row, allocated by diffusers
        )
        for block in self.dit.transformer_blocks:
            block.norm1.emb.class_embedder.dropout_prob = 0.0  # drop once, in forward
            nn.init.zeros_(block.norm1.linear.weight)  # adaLN-Zero: gates start at 0
            nn.init.zeros_(block.norm1.linear.bias)
        for layer in (self.dit.proj_out_1, self.dit.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, H, W); t: (B,) long; y: (B,) long or None (= null class)."""
        y = self.conditioning_labels(y, x.shape[0], x.device)  # (B,), one drop shared by all blocks
        return self.dit(x, timestep=t, class_labels=y).sample  # (B, C_out, H, W)
