"""ADM-style class-conditional UNet on diffusers' `UNet2DModel`.

Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (2021),
guided-diffusion's `UNetModel` with the paper's settings: BigGAN residual
blocks for up/down-sampling (`resblock_updown`), AdaGN (`use_scale_shift_norm`:
GroupNorm(h) * (1 + scale(t, y)) + shift(t, y)), multi-head self-attention with
a fixed head width (`num_head_channels=64`) at chosen feature-map sizes, and a
class embedding added to the timestep embedding. diffusers' `UNet2DModel`
already has every part; this file configures it the ADM way and adds what
diffusers leaves out: the zero initialisation of guided-diffusion's
`zero_module` and the null class + label drop of classifier-free guidance
(Ho & Salimans 2022), owned by the model as DiT's `LabelEmbedder` owns them.

Attention runs through diffusers' default `AttnProcessor2_0`, i.e. PyTorch's
`scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).
The wrapped `UNet2DModel` is kept as `.unet` so exports can use diffusers'
`save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from latent_diffusion.utils.errors import UserError

# ----------------------------------------------------------------------------
# Label dropout for classifier-free guidance
# ----------------------------------------------------------------------------


def drop_labels(
    y: torch.Tensor, p: float, null_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class with probability p (Ho & Salimans 2022, Alg. 1).

    Training on a mix of conditional and unconditional examples lets one network
    give both eps(x, y) and eps(x, null) for guidance. Returns a new tensor.
    """
    if p <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p  # (B,)
    return torch.where(drop, torch.full_like(y, null_id), y)


class LabelDropout(nn.Module):
    """Label drop that acts only in training mode; eval and sampling see the labels as given."""

    def __init__(self, p: float, null_id: int):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise UserError(f"model.p_uncond={p} must be in [0, 1); 0.1 is the usual CFG value")
        self.p = p
        self.null_id = null_id

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return y
        return drop_labels(y, self.p, self.null_id, generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, null_id={self.null_id}"


# ----------------------------------------------------------------------------
# Mapping ADM's hyper-parameters onto diffusers' block lists
# ----------------------------------------------------------------------------


def feature_map_sizes(sample_size: int, num_levels: int) -> list[int]:
    """Side length of the feature map at each UNet level: sample_size / 2^level."""
    return [sample_size // 2**level for level in range(num_levels)]


def attention_levels(
    sample_size: int, channel_mult: Sequence[int], attention_resolutions: Sequence[int]
) -> list[bool]:
    """Which levels get self-attention.

    `attention_resolutions` are feature-map side lengths, as in guided-diffusion's
    command line ("32,16,8"; its script_util turns them into down-sampling
    factors ds = image_size // res). Level i works on sample_size / 2^i pixels.
    A requested size that no level has is an error rather than silently ignored,
    since it usually means a latent config is used on pixels (or vice versa).
    """
    sizes = feature_map_sizes(sample_size, len(channel_mult))
    missing = sorted(set(int(r) for r in attention_resolutions) - set(sizes), reverse=True)
    if missing:
        raise UserError(
            f"model.attention_resolutions {list(attention_resolutions)} asks for attention at "
            f"{missing}x{missing}, but with sample_size={sample_size} and channel_mult="
            f"{list(channel_mult)} the UNet levels are {sizes}; set model.attention_resolutions "
            f"to sizes from that list or extend model.channel_mult (one entry per halving)"
        )
    return [size in set(int(r) for r in attention_resolutions) for size in sizes]


def _check_geometry(
    sample_size: int,
    base_channels: int,
    channel_mult: Sequence[int],
    attn: Sequence[bool],
    head_dim: int,
    norm_groups: int,
) -> None:
    """Fail early with a message instead of deep inside diffusers (GroupNorm / head split)."""
    if sample_size % 2 ** (len(channel_mult) - 1):
        raise UserError(
            f"sample_size={sample_size} cannot be halved {len(channel_mult) - 1} times "
            f"(model.channel_mult={list(channel_mult)}); use fewer levels or a size divisible "
            f"by {2 ** (len(channel_mult) - 1)}"
        )
    for level, mult in enumerate(channel_mult):
        ch = base_channels * mult
        if ch % norm_groups:
            raise UserError(
                f"model.base_channels*channel_mult[{level}]={ch} is not divisible by the "
                f"{norm_groups} GroupNorm groups; choose base_channels as a multiple of "
                f"{norm_groups}"
            )
        # The middle block (at the last level) always has attention, like ADM's.
        needs_heads = attn[level] or level == len(channel_mult) - 1
        if needs_heads and ch % head_dim:
            raise UserError(
                f"level {level} has {ch} channels, not a multiple of model.head_dim={head_dim} "
                f"(ADM's num_head_channels); change model.head_dim or model.base_channels"
            )


# ----------------------------------------------------------------------------
# Core model
# ----------------------------------------------------------------------------


class ConditionalDenoiser(nn.Module):
    """What every denoiser shares: the call model(x, t, y) with y None meaning the null
    class, the null class as label num_classes, the label drop (training mode only), and
    the channel bookkeeping the export reads back (in / out channels, learn_sigma)."""

    def _init_conditioning(
        self, in_channels: int, num_classes: int, learn_sigma: bool, p_uncond: float
    ):
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.label_dropout = LabelDropout(p_uncond, null_id=num_classes)

    @property
    def null_class(self) -> int:
        """Label of the unconditional branch of classifier-free guidance."""
        return self.num_classes

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def conditioning_labels(self, y: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B,) labels the network sees: the null class for y None, else y with the label
        drop of classifier-free guidance applied in training mode."""
        if y is None:
            y = torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        return self.label_dropout(y)


class GuidedClassEmbedding(nn.Embedding):
    """The class embedding of a guidance-distilled student: embed(y) + g(w), added to the
    timestep embedding as the class embedding is (Meng et al. 2023, "On Distillation of Guided
    Diffusion Models": w enters as a Fourier embedding like t's). g's last layer starts at
    zero, so a student initialised from its teacher starts as the conditional teacher.

    It replaces UNet2DModel's nn.Embedding and keeps its weight name (`class_embedding.weight`),
    so the teacher's weights load unchanged; diffusers' forward hands it the class labels,
    which for a student are (B, 2) float rows (label, w), packed by ADMUNet.forward."""

    def __init__(self, num_embeddings: int, embedding_dim: int, fourier_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.fourier_dim = int(fourier_dim)
        self.guidance = nn.Sequential(
            nn.Linear(self.fourier_dim, embedding_dim),
            nn.SiLU(),
            nn.Linear(embedding_dim, embedding_dim),
        )
        nn.init.zeros_(self.guidance[2].weight)
        nn.init.zeros_(self.guidance[2].bias)

    def forward(self, labels_and_w: torch.Tensor) -> torch.Tensor:
        y, w = labels_and_w[:, 0].round().long(), labels_and_w[:, 1]  # (B,), (B,)
        # w x 1000 as LCM's guidance-scale embedding: w in [1, 8] spans the frequencies t does
        feats = get_timestep_embedding(
            w.float() * 1000.0, self.fourier_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )  # (B, fourier_dim)
        return super().forward(y) + self.guidance(feats.to(self.weight.dtype))


class ADMUNet(ConditionalDenoiser):
    """eps/v/x0 (+ variance interpolation) predictor: forward(x, t, y) -> (B, C_out, H, W).

    in_channels: latent channels (4) or pixel channels (1) for pixel baselines.
    learn_sigma: output 2*in_channels: [:C] the mean parameterisation (eps, v or
        x0), [C:] the v of Nichol & Dhariwal's Sigma = exp(v log beta + (1-v) log beta~).
    num_classes: real classes; index num_classes is the null class for CFG.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        sample_size: int,
        learn_sigma: bool = True,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8, 4),
        head_dim: int = 64,
        dropout: float = 0.0,
        p_uncond: float = 0.1,
        norm_groups: int = 32,
        channels_last: bool = False,
        guidance_embed_dim: int = 0,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        # Everything build_denoiser needs to rebuild this architecture (exports, `sample`).
        self.denoiser_config = dict(
            arch="adm_unet",
            in_channels=in_channels,
            num_classes=num_classes,
            sample_size=sample_size,
            learn_sigma=learn_sigma,
            base_channels=base_channels,
            channel_mult=list(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_resolutions=[int(r) for r in attention_resolutions],
            head_dim=head_dim,
            dropout=dropout,
            p_uncond=p_uncond,
            norm_groups=norm_groups,
        )
        if guidance_embed_dim:  # a guidance-distilled student (latent_diffusion/distill.py)
            self.denoiser_config["guidance_embed_dim"] = int(guidance_embed_dim)
        self.guidance_embed_dim = int(guidance_embed_dim)
        attn = attention_levels(sample_size, channel_mult, attention_resolutions)
        _check_geometry(sample_size, base_channels, channel_mult, attn, head_dim, norm_groups)
        if num_classes < 1:
            raise UserError(f"num_classes={num_classes}: the data set must have at least one class")

        self._init_conditioning(in_channels, num_classes, learn_sigma, p_uncond)

        # Level i: resnets (+ attention) then a BigGAN-style resblock down-sample
        # (ResnetBlock2D(down=True)); the up path mirrors it with num_res_blocks+1
        # resnets per level, exactly ADM's input_blocks / output_blocks.
        down = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn]
        up = ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)]
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=self.out_channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(base_channels * m for m in channel_mult),
            layers_per_block=num_res_blocks,
            downsample_type="resnet",
            upsample_type="resnet",
            resnet_time_scale_shift="scale_shift",  # AdaGN
            attention_head_dim=head_dim,  # heads = channels // 64, ADM's num_head_channels
            dropout=dropout,
            norm_num_groups=norm_groups,
            # with scale_shift diffusers drops the mid-attention GroupNorm unless given;
            # ADM's AttentionBlock normalises first everywhere.
            attn_norm_num_groups=norm_groups,
            # ADM: timestep_embedding = [cos, sin], freqs 10000^(-i/half) -> flip, shift 0.
            flip_sin_to_cos=True,
            freq_shift=0,
            num_class_embeds=num_classes + 1,  # + null class; added to the time embedding
        )
        self._zero_init()
        if self.guidance_embed_dim:
            emb = self.unet.class_embedding
            self.unet.class_embedding = GuidedClassEmbedding(
                emb.num_embeddings, emb.embedding_dim, self.guidance_embed_dim
            )
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _zero_init(self) -> None:
        """guided-diffusion's zero_module: the last conv of every residual branch,
        every attention output projection and the output conv start at zero, so each
        block starts as the identity and the initial prediction is exactly 0."""
        for module in self.unet.modules():
            if isinstance(module, ResnetBlock2D):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            if isinstance(module, Attention):
                nn.init.zeros_(module.to_out[0].weight)
                nn.init.zeros_(module.to_out[0].bias)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        w: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x: (B, C, H, W) noisy latents; t: (B,) long in [0, T) (float when the diffusion
        rescales timesteps); y: (B,) long in [0, num_classes] or None (= null class);
        w: the guidance weight, a number or (B,), for a guidance-distilled student only."""
        y = self.conditioning_labels(
            y, x.shape[0], x.device
        )  # (B,), null with prob p_uncond in training
        if self.guidance_embed_dim:
            if w is None:
                raise TypeError("a guidance-distilled student needs w, the guidance weight")
            w = torch.as_tensor(w, dtype=torch.float32, device=x.device).expand(x.shape[0])
            y = torch.stack([y.float(), w], dim=1)  # (B, 2): GuidedClassEmbedding's input
        elif w is not None:
            raise TypeError("w is given to a denoiser without a guidance embedding")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x, t, class_labels=y).sample  # (B, C_out, H, W)
        return out
