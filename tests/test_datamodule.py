"""SpectrogramDataModule on the real composed config (data=microdoppler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from latent_diffusion.data.transforms import Augment
from latent_diffusion.utils.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_data(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "data.n_per_class=4",
                "data.val_per_class=2",
                "data.test_per_class=2",
                "data.batch_size=8",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def test_microdoppler_config_gives_pixel_batches(tmp_path):
    cfg = compose_data(tmp_path)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert dm.class_names == [
        "walk",
        "run",
        "jump",
        "fall",
        "sit_down",
        "stand_up",
        "pick_up",
        "box",
    ]
    assert (dm.channels, dm.image_size) == (1, 64)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [32, 16, 16]
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["x"], batch["y"]
    assert x.shape == (8, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert y.dtype == torch.long and set(y.tolist()) <= set(range(8))
    # the simulated splits were cached on disk, keyed by their parameters
    assert len(list((tmp_path / "cache" / "simulator").glob("*/train.npz"))) == 1


def test_no_flips_by_default_and_loader_returns_the_stored_images(tmp_path):
    dm = instantiate(compose_data(tmp_path).data)
    assert not dm.augment.enabled
    val = next(iter(dm.val_dataloader()))  # not shuffled: the first 8 items in order
    ds = dm.dataset("val")
    expected = torch.stack([ds[i][0] for i in range(8)])
    torch.testing.assert_close(val["x"], expected, rtol=0, atol=0)


def test_worker_count_does_not_change_the_data(tmp_path):
    a = instantiate(compose_data(tmp_path).data)
    b = instantiate(compose_data(tmp_path, "data.num_workers=2").data)
    xa = torch.cat([bt["x"] for bt in a.val_dataloader()])
    xb = torch.cat([bt["x"] for bt in b.val_dataloader()])
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)


def test_time_and_doppler_augmentations_move_the_axis_they_name():
    torch.manual_seed(0)
    x = torch.arange(12.0).view(1, 3, 4)  # (C, H=velocity, W=time), every value distinct
    flipped = [Augment(time_flip=True)(x) for _ in range(40)]
    assert any(torch.equal(f, x.flip(-1)) for f in flipped)
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f in flipped)
    # time_shift=true: a circular roll along time by any of the W offsets, each seen
    rolls = set()
    for _ in range(80):
        f = Augment(time_shift=True)(x)
        offsets = [k for k in range(4) if torch.equal(f, torch.roll(x, k, dims=-1))]
        assert len(offsets) == 1, f  # a roll along time, never along velocity
        rolls.add(offsets[0])
    assert rolls == {0, 1, 2, 3}
    # a fraction: offsets bounded by round(0.25 * 8) = 2 either way
    wide = torch.arange(24.0).view(1, 3, 8)
    seen = set()
    for _ in range(100):
        f = Augment(time_shift=0.25)(wide)
        (k,) = [k for k in range(-4, 4) if torch.equal(f, torch.roll(wide, k, dims=-1))]
        seen.add(k)
    assert seen == {-2, -1, 0, 1, 2}
    # doppler_flip: rows (velocity) reversed, time untouched; about half the time
    dflip = [Augment(doppler_flip=True)(x) for _ in range(40)]
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-2)) for f in dflip)
    assert 5 < sum(torch.equal(f, x.flip(-2)) for f in dflip) < 35


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.latents=sometimes", "data.latents"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.classes=[walk,swim]", "swim"),
    ],
)
def test_bad_values_are_user_errors(tmp_path, override, needle):
    cfg = compose_data(tmp_path, override)
    with pytest.raises(Exception) as info:
        dm = instantiate(cfg.data)
        dm.setup()
    from latent_diffusion.utils.errors import find_user_error

    err = find_user_error(info.value)
    assert isinstance(err, UserError) and needle in str(err)
