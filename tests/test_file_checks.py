"""Arrays and files checked for what they claim (docs/reliability.md, bad-input matrix):
ambiguous .npz / .mat contents, channel-first image stacks, labels that do not index the
class list, symbolic links whose target is gone, truncated weight files."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_bad_inputs import ROOT, TINY_EXPORT

from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.readers import load_spectrogram
from latent_diffusion.metrics.generated import load_generated
from latent_diffusion.utils.errors import UserError


# ------------------------------------------------------------------ several candidate arrays
def test_several_2d_arrays_are_named_not_guessed(tmp_path):
    spec, mask = np.random.default_rng(0).random((16, 16)), np.ones((16, 16))
    np.savez(
        tmp_path / "a.npz", mask=mask, spec=spec, t=np.arange(16.0)
    )  # the first is not the spectrogram
    scipy.io.savemat(tmp_path / "a.mat", {"S": spec, "M": mask, "fs": 1000.0})
    for f in ("a.npz", "a.mat"):
        with pytest.raises(
            UserError, match=r"several 2-D arrays .*'(mask|S)' \(16, 16\).*data.variable="
        ):
            load_spectrogram(tmp_path / f)
    a = load_spectrogram(tmp_path / "a.npz", variable="spec", value_kind="unit")
    np.testing.assert_allclose(a, spec.astype(np.float32))
    np.savez(
        tmp_path / "one.npz", t=np.arange(16.0), spec=spec
    )  # an axis vector first: not a candidate
    np.testing.assert_allclose(
        load_spectrogram(tmp_path / "one.npz", value_kind="unit"), spec.astype(np.float32)
    )


# ------------------------------------------------------------------ generated stacks
def _npz(path, x, y, names=("walk", "fall")):
    np.savez(path, x, np.asarray(y), class_names=np.array(names))
    return path


@pytest.mark.parametrize(
    "x,y,match",
    [
        (
            np.zeros((4, 1, 16, 16), np.uint8),
            [0, 1, 0, 1],
            r"channel-first \(N, C, H, W\) = \(4, 1, 16, 16\).*transpose",
        ),
        (np.zeros((4, 16, 16, 2), np.uint8), [0, 1, 0, 1], r"2 channels"),
        (np.zeros((4, 16, 16, 1), np.uint8), [0, 1, 0], r"\(3,\) labels for 4 images"),
        (np.zeros((4, 16, 16), np.uint8), [0, 1, 2, 1], r"labels outside 0..1 \(e.g. \[2\]\)"),
        (np.zeros((4, 16, 16), np.uint8), [0, -1, 0, 1], r"labels outside 0..1 \(e.g. \[-1\]\)"),
        (np.zeros((4, 16, 16), np.uint8), [0.5, 1, 0, 1], r"not integer class indices"),
    ],
)
def test_generated_stacks_are_checked_for_layout_and_labels(tmp_path, x, y, match):
    with pytest.raises(UserError, match=match):
        load_generated(_npz(tmp_path / "s.npz", x, y), ["walk", "fall"], 16)


def test_a_well_formed_stack_still_loads(tmp_path):
    x = np.zeros((4, 16, 16, 3), np.uint8)  # grey stored as RGB
    out, y, _ = load_generated(_npz(tmp_path / "s.npz", x, [1, 0, 1, 0]), ["walk", "fall"], 16)
    assert out.shape == (4, 1, 16, 16) and y.tolist() == [1, 0, 1, 0]


# ------------------------------------------------------------------ files that vanish
def test_broken_symlinks_are_named_with_strict_and_said_without(tmp_path):
    root = tmp_path / "data"
    for c in ("walk", "fall"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    (root / "walk" / "gone.png").symlink_to(tmp_path / "unmounted" / "gone.png")
    kw = {
        "root": str(root),
        "image_size": 16,
        "cache_dir": tmp_path / "cache",
        "val_fraction": 0.25,
        "test_fraction": 0.25,
    }
    with pytest.raises(
        UserError, match=r"1 data files are symbolic links whose target is gone: .*gone.png"
    ):
        ImageFolderSource(**kw)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        src = ImageFolderSource(**kw, strict=False)
    assert any("skipped 1 symbolic links" in str(x.message) for x in w)
    assert sum(len(src.split(s)) for s in ("train", "val", "test")) == 8


# ------------------------------------------------------------------ damaged weight files
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    ns: dict = {}
    exec(TINY_EXPORT, ns)
    return ns["tiny_export"](ROOT, tmp_path_factory.mktemp("exp") / "run" / "export")


def test_a_truncated_export_says_it_is_damaged_and_how_to_rebuild(tiny_export, tmp_path):
    from latent_diffusion.lit.export import load_export

    bad = tmp_path / "export"
    shutil.copytree(tiny_export, bad)
    weights = bad / "denoiser" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        UserError, match=r"safetensors cannot be read .*this export is damaged.*ckpt_path=last"
    ):
        load_export(bad, load_vae=False)
    meta = (bad / "export.json").read_text()
    (bad / "export.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(UserError, match=r"export.json cannot be read .*this export is damaged"):
        load_export(bad, load_vae=False)
    json.loads(meta)  # the original was whole


def test_a_truncated_vae_folder_says_it_is_damaged(tmp_path):
    import torch

    from latent_diffusion.vae import FrozenVAE
    from latent_diffusion.vae.module import build_autoencoder

    torch.manual_seed(0)
    build_autoencoder(block_out_channels=(8, 16), norm_num_groups=8).save_pretrained(
        tmp_path / "vae"
    )
    w = next((tmp_path / "vae").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(
        UserError, match=r"^could not load an AutoencoderKL from .*is damaged or incomplete"
    ):
        FrozenVAE.load(tmp_path / "vae", data_channels=1)
