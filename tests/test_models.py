"""The ADM UNet denoiser: shapes, zero init, class conditioning, label drop, attention placement,
configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from hydra.utils import instantiate
from omegaconf import OmegaConf

from latent_diffusion.models import MODELS, build_denoiser, create_model, drop_labels
from latent_diffusion.models.unet import ADMUNet
from latent_diffusion.utils.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
TINY = dict(
    base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), head_dim=32
)
# The same family at 8x8 for tests where only behaviour, not geometry, matters (4x cheaper).
MICRO = {**TINY, "attention_resolutions": (4,)}


def _inputs(b: int, c: int, size: int, num_classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, num_classes, (b,), generator=g)
    return x, t, y


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every weight off its (partly zero) init so all paths carry signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "in_ch,size,mult,learn_sigma",
    [
        (4, 16, (1, 2), True),  # 64x64 image -> 4x16x16 latent
        (4, 32, (1, 2, 2), False),  # 128x128 image -> 4x32x32 latent
        (1, 64, (1, 2, 2, 2), True),  # pixel-space baseline, channel_mult extended
    ],
)
def test_output_shape_and_zero_init(in_ch, size, mult, learn_sigma):
    model = ADMUNet(
        in_channels=in_ch,
        num_classes=5,
        sample_size=size,
        learn_sigma=learn_sigma,
        **{**TINY, "channel_mult": mult},
    )
    x, t, y = _inputs(2, in_ch, size)
    with torch.no_grad():
        out = model(x, t, y)
    c_out = 2 * in_ch if learn_sigma else in_ch
    assert out.shape == (2, c_out, size, size)
    # guided-diffusion's zero_module on the output conv: the first prediction is exactly 0.
    assert torch.count_nonzero(model.unet.conv_out.weight) == 0
    assert torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_class_and_time_conditioning_and_null_class():
    torch.manual_seed(0)
    model = ADMUNet(in_channels=4, num_classes=5, sample_size=8, **MICRO).eval()
    _perturb(model)
    x, t, _ = _inputs(1, 4, 8)
    # One batch: the same x and t under the 5 classes and the null class 5, then a later t.
    xs, ts = x.expand(7, -1, -1, -1), torch.cat([t.expand(6), (t + 500) % 1000])
    ys = torch.tensor([0, 1, 2, 3, 4, 5, 0])
    out = model(xs, ts, ys)  # (7, 8, 8, 8)
    for a in range(7):
        for b in range(a + 1, 7):
            assert (out[a] - out[b]).abs().max() > 1e-3, f"rows {a} and {b} give the same output"
    assert model.null_class == 5
    # y=None is the unconditional branch: the same as passing the null class.
    torch.testing.assert_close(model(x, t, None)[0], out[5], rtol=1e-4, atol=1e-5)
    # The embedding table has exactly num_classes + 1 rows.
    assert model.unet.class_embedding.num_embeddings == 6


def test_drop_labels_rate_and_null_id():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 7, (200_000,), generator=g)
    dropped = drop_labels(y, 0.1, null_id=7, generator=g)
    changed = dropped != y
    assert abs(changed.float().mean().item() - 0.1) < 0.005  # binomial sd ~ 0.0007
    assert torch.all(dropped[changed] == 7)
    assert torch.equal(drop_labels(y, 0.0, 7), y)


def _labels_seen(model: ADMUNet, y: torch.Tensor) -> torch.Tensor:
    """The labels that actually reach the class embedding in one forward pass."""
    seen = []
    handle = model.unet.class_embedding.register_forward_hook(
        lambda m, inp, out: seen.append(inp[0])
    )
    x, t, _ = _inputs(y.shape[0], 4, 8)
    with torch.no_grad():
        model(x, t, y)
    handle.remove()
    return seen[0]


def test_label_dropout_only_in_training():
    torch.manual_seed(0)
    model = ADMUNet(in_channels=4, num_classes=5, sample_size=8, p_uncond=0.3, **MICRO)
    y = torch.randint(0, 5, (96,))
    seen_train = _labels_seen(model.train(), y)
    rate = (seen_train == model.null_class).float().mean().item()
    assert 0.1 < rate < 0.5  # p=0.3, n=96: sd 0.047; the exact rate is tested on drop_labels
    assert torch.all(
        seen_train[seen_train != model.null_class] == y[seen_train != model.null_class]
    )
    assert torch.equal(_labels_seen(model.eval(), y), y)


def test_attention_at_requested_resolutions():
    model = create_model("small", in_channels=4, num_classes=5, sample_size=16, learn_sigma=True)
    down = [type(b).__name__ for b in model.unet.down_blocks]
    up = [type(b).__name__ for b in model.unet.up_blocks]
    assert down == ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]  # 16, 8, 4
    assert up == ["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"]  # 4, 8, 16
    # Run it and record the feature-map size every attention layer actually sees.
    sizes, heads = set(), set()

    def hook(module, args, kwargs):
        sizes.add(args[0].shape[-1])
        heads.add(module.heads)

    handles = [
        m.register_forward_pre_hook(hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    x, t, y = _inputs(1, 4, 16)
    with torch.no_grad():
        model(x, t, y)
    for h in handles:
        h.remove()
    assert sizes == {8, 4}  # the mid block runs at 4x4, the last level
    assert heads == {2}  # 128 channels / head_dim 64
    # ADM's AdaGN and BigGAN resblock up/down-sampling.
    resnets = [m for m in model.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert all(r.time_embedding_norm == "scale_shift" for r in resnets)
    assert sum(r.down for r in resnets) == 2 and sum(r.up for r in resnets) == 2


def test_bad_attention_resolution_names_the_fix():
    with pytest.raises(UserError, match=r"attention_resolutions.*channel_mult"):
        ADMUNet(in_channels=1, num_classes=3, sample_size=64, **TINY)  # levels 64, 32: no 8x8
    with pytest.raises(UserError, match="head_dim"):
        ADMUNet(in_channels=4, num_classes=3, sample_size=16, **{**TINY, "head_dim": 48})


def test_sizes_ordered_and_registry_matches_yaml():
    counts = {}
    for size, sample_size in [("tiny", 16), ("small", 16), ("base", 32), ("dit_s", 16)]:
        cfg = OmegaConf.load(CONF / f"{size}.yaml")
        registry = {k: v for k, v in MODELS[size].items()}
        from_yaml = {k: cfg[k] for k in registry}
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in registry.items()} == from_yaml
        assert all(
            cfg[k] is None for k in ("in_channels", "num_classes", "sample_size", "learn_sigma")
        )
        with torch.device("meta"):  # no memory for the 300M base model
            model = instantiate(
                cfg, in_channels=4, num_classes=8, sample_size=sample_size, learn_sigma=True
            )
        counts[size] = model.num_params
    assert counts["tiny"] < counts["small"] < counts["dit_s"] < counts["base"]
    assert counts["tiny"] < 1_500_000 and 2_000_000 < counts["small"] < 20_000_000


def test_yaml_instantiates_working_model_and_requires_filled_keys():
    cfg = OmegaConf.load(CONF / "tiny.yaml")
    # Hydra wraps the target's exception; the UserError is its cause.
    with pytest.raises(Exception) as info:
        instantiate(cfg)
    assert isinstance(info.value.__cause__, UserError)
    assert "model.in_channels" in str(info.value.__cause__)
    model = instantiate(cfg, in_channels=4, num_classes=3, sample_size=16, learn_sigma=False)
    x, t, y = _inputs(2, 4, 16, num_classes=3)
    with torch.no_grad():
        assert model(x, t, y).shape == (2, 4, 16, 16)
    with pytest.raises(UserError, match="arch"):
        build_denoiser(arch="vit", in_channels=4, num_classes=3, sample_size=16, learn_sigma=True)


def test_channels_last_matches_default_layout():
    kw = dict(in_channels=4, num_classes=5, sample_size=8, **MICRO)
    torch.manual_seed(0)
    a = ADMUNet(**kw).eval()
    _perturb(a)
    b = ADMUNet(**kw, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, y = _inputs(1, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, y), b(x, t, y), rtol=1e-4, atol=1e-5)


def test_training_step_reduces_loss():
    """The zero-initialised model is trainable: a few AdamW steps lower the MSE to a fixed
    target."""
    torch.manual_seed(0)
    model = ADMUNet(
        in_channels=4, num_classes=5, sample_size=8, learn_sigma=False, p_uncond=0.0, **MICRO
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, y = _inputs(4, 4, 8)
    target = torch.randn_like(x)
    losses = []
    for _ in range(5):
        loss = (model(x, t, y) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01


# ----------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------

DIT_MINI = dict(arch="dit", hidden_size=64, depth=2, head_dim=32, patch_size=2)


def test_dit_shape_zero_init_and_conditioning():
    model = build_denoiser(
        in_channels=4, num_classes=5, sample_size=16, learn_sigma=True, **DIT_MINI
    )
    x, t, _ = _inputs(1, 4, 16)
    xs, ts = x.expand(3, -1, -1, -1), t.expand(3)
    ys = torch.tensor([0, 1, 5])  # 5 = null class
    with torch.no_grad():
        out = model.eval()(xs, ts, ys)
    assert out.shape == (3, 8, 16, 16)
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero + zero final layer
    _perturb(model)
    with torch.no_grad():
        out = model(xs, ts, ys)
    assert (out[0] - out[1]).abs().max() > 1e-3 and (out[0] - out[2]).abs().max() > 1e-3
    rebuilt = build_denoiser(**model.denoiser_config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(xs, ts, ys), out)


def test_dit_drops_labels_once_for_all_blocks():
    """diffusers' DiT drops labels in every block separately; ours drops once, before the blocks."""
    torch.manual_seed(0)
    model = build_denoiser(
        in_channels=4, num_classes=5, sample_size=16, learn_sigma=False, p_uncond=0.5, **DIT_MINI
    ).train()
    seen = []
    embedders = [b.norm1.emb.class_embedder for b in model.dit.transformer_blocks]
    handles = [
        e.embedding_table.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        for e in embedders
    ]
    y = torch.randint(0, 5, (64,))
    x, t, _ = _inputs(64, 4, 16)
    with torch.no_grad():
        model(x, t, y)
    for h in handles:
        h.remove()
    assert len(seen) >= 2 and all(torch.equal(s, seen[0]) for s in seen)
    assert 0.3 < (seen[0] == 5).float().mean().item() < 0.7  # p=0.5 drop did happen
    assert embedders[0].embedding_table.num_embeddings == 6


def test_rebuild_from_denoiser_config_and_diffusers_export(tmp_path):
    """An export = denoiser_config (JSON) + weights; the UNet also round-trips through
    save_pretrained."""
    import json

    from diffusers import UNet2DModel

    model = create_model(
        "tiny", in_channels=4, num_classes=3, sample_size=16, learn_sigma=True
    ).eval()
    _perturb(model)
    config = json.loads(json.dumps(model.denoiser_config))  # must be plain JSON
    rebuilt = build_denoiser(**config).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture, same names
    model.unet.save_pretrained(tmp_path / "unet")  # safetensors, as the export stage writes it
    reloaded = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x, t, y = _inputs(1, 4, 16, num_classes=3)
    with torch.no_grad():
        ref = model(x, t, y)
        torch.testing.assert_close(rebuilt(x, t, y), ref)
        torch.testing.assert_close(reloaded(x, t, class_labels=y).sample, ref)
