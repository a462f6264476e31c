"""Readers: colour-map inversion, grey images, arrays and .mat files, bad input messages."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from latent_diffusion.data.colormaps import apply_colormap, invert_colormap, is_grey, jet
from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.readers import load_spectrogram, read_spectrogram
from latent_diffusion.data.source import build_source
from latent_diffusion.utils.errors import UserError

D = 45.0


def field(h=48, w=64, seed=0):
    """A smooth spectrogram-like scalar in [0, 1] covering the whole range."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = 0.5 + 0.5 * np.sin(xx / 6.0 + 0.3) * np.cos(yy / 5.0)
    f = f + 0.01 * np.random.default_rng(seed).standard_normal(f.shape)
    f = (f - f.min()) / (f.max() - f.min())
    return f


def save_png(path, rgb):
    Image.fromarray(rgb).save(path)
    return path


# -- colour maps ----------------------------------------------------------------


def test_jet_matches_matlab_construction():
    j = jet(64)
    # MATLAB jet(64): rows 1, 32, 64 (1-based)
    np.testing.assert_allclose(j[0], [0, 0, 0.5625])
    np.testing.assert_allclose(j[31], [0.5, 1, 0.5])
    np.testing.assert_allclose(j[63], [0.5, 0, 0])
    # both ends of jet average to the same grey: why RGB averaging is wrong
    assert abs(j[0].mean() - j[63].mean()) < 0.03


@pytest.mark.parametrize("name", ["jet", "parula", "viridis"])
def test_png_round_trip(tmp_path, name):
    f = field()
    p = save_png(tmp_path / f"{name}.png", apply_colormap(f, name))
    rgb = np.asarray(Image.open(p).convert("RGB"))
    s, valid, chosen = invert_colormap(rgb)
    assert chosen == name
    assert valid.all()
    assert np.abs(s - f).max() < 0.03


@pytest.mark.parametrize("name", ["jet", "parula", "viridis"])
def test_jpeg_round_trip(tmp_path, name):
    f = field()
    p = tmp_path / f"{name}.jpg"
    Image.fromarray(apply_colormap(f, name)).save(p, quality=90)
    x = load_spectrogram(p, crop_to_plot=False)
    err = np.abs(x - f)
    assert x.shape == f.shape
    assert err.mean() < 0.03
    assert np.percentile(err, 99) < 0.1


def test_figure_with_border_text_and_colorbar_is_masked(tmp_path):
    f = field(40, 56)
    fig = np.full((70, 100, 3), 255, np.uint8)  # white figure background
    fig[10:50, 12:68] = apply_colormap(f, "jet")  # the plot
    fig[9, 11:69] = fig[50, 11:69] = 0  # black axes box
    fig[9:51, 11] = fig[9:51, 68] = 0
    fig[56:64, 20:60:3] = 0  # "text" under the axis
    fig[10:50, 80:86] = apply_colormap(
        np.linspace(1, 0, 40)[:, None].repeat(6, 1), "jet"
    )  # colour bar
    fig[25:27, 30:40] = 0  # a black annotation inside the plot
    s, valid, chosen = invert_colormap(fig)
    assert chosen == "jet"
    expected = np.zeros(fig.shape[:2], bool)
    expected[10:50, 12:68] = True
    expected[25:27, 30:40] = False
    assert (valid == expected).all()  # background, axes, text and colour bar all masked
    # filled annotation pixels take nearby values; the rest is exact
    assert np.abs(s[10:50, 12:68] - f)[expected[10:50, 12:68]].max() < 0.01
    assert np.abs(s[25:27, 30:40] - f[15:17, 18:28]).max() < 0.2
    # the reader crops to the plot area
    p = save_png(tmp_path / "figure.png", fig)
    x, info = read_spectrogram(p)
    assert x.shape == (40, 56)
    assert info["colormap"] == "jet" and 0 < info["masked_fraction"] < 0.02
    assert np.abs(x - f).mean() < 0.01


def test_grey_png_is_one_channel(tmp_path):
    f = field()
    Image.fromarray(np.rint(f * 65535).astype(np.uint16)).save(tmp_path / "grey16.png")
    np.testing.assert_allclose(load_spectrogram(tmp_path / "grey16.png"), f, atol=1e-4)
    g = np.rint(f * 255).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "grey.png")
    Image.fromarray(np.repeat(g[..., None], 3, -1)).save(tmp_path / "grey_rgb.png")
    assert is_grey(np.repeat(g[..., None], 3, -1))
    assert not is_grey(apply_colormap(f, "jet"))
    for name in ("grey.png", "grey_rgb.png"):
        x, info = read_spectrogram(tmp_path / name)
        assert "colormap" not in info
        assert np.abs(x - f).max() <= 0.5 / 255 + 1e-6


# -- arrays and .mat ----------------------------------------------------------


def _spectra():
    """One spectrogram as complex STFT, magnitude and dB, and its normalised image."""
    rng = np.random.default_rng(1)
    mag = 10 ** (rng.uniform(-3.5, 0.0, size=(32, 40))) * 7.3  # ~70 dB span, arbitrary scale
    phase = rng.uniform(0, 2 * np.pi, size=mag.shape)
    db = 20 * np.log10(mag) + 12.0  # absolute dB (offset)
    expected = np.clip(20 * np.log10(mag / mag.max()), -D, 0) / D + 1
    return {"complex": mag * np.exp(1j * phase), "magnitude": mag, "db": db - 80.0}, expected


def _write_v73(path, name, a):
    """A MATLAB -v7.3 file: HDF5, column-major (axes reversed), 'MATLAB_class' attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        data = a.T
        if np.iscomplexobj(a):
            dt = np.dtype([("real", "<f8"), ("imag", "<f8")])
            c = np.empty(data.shape, dt)
            c["real"], c["imag"] = data.real, data.imag
            data = c
        ds = f.create_dataset(name, data=data)
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        f.create_dataset("label", data=np.array([[3.0]])).attrs["MATLAB_class"] = np.bytes_(
            "double"
        )


def test_arrays_and_mat_give_the_same_image(tmp_path):
    spectra, expected = _spectra()
    for kind, a in spectra.items():
        np.save(tmp_path / f"{kind}.npy", a)
        np.savez(tmp_path / f"{kind}.npz", spec=a, other=np.zeros(3))
        scipy.io.savemat(tmp_path / f"{kind}_v5.mat", {"S": a, "fs": 1000.0})
        _write_v73(tmp_path / f"{kind}_v73.mat", "S", a)
    outs = {}
    for p in sorted(tmp_path.iterdir()):
        x, info = read_spectrogram(p)
        kind = p.stem.split("_")[0]
        assert info["value_kind"] == ("db" if kind == "db" else "magnitude"), p.name
        outs[p.name] = x
        assert x.shape == (32, 40), p.name  # v7.3 transposed back
        np.testing.assert_allclose(x, expected, atol=1e-5, err_msg=p.name)
    assert len(outs) == 12
    # power spectra with value_kind=power, explicit variable, flip and transpose
    np.save(tmp_path / "power.npy", spectra["magnitude"] ** 2)
    np.testing.assert_allclose(
        load_spectrogram(tmp_path / "power.npy", value_kind="power"), expected, atol=1e-5
    )
    x = load_spectrogram(tmp_path / "db_v5.mat", variable="S", flip_doppler=True, transpose=True)
    np.testing.assert_allclose(x, expected.T[::-1], atol=1e-5)
    assert load_spectrogram(tmp_path / "magnitude.npy", image_size=16).shape == (16, 16)


# -- image-folder source --------------------------------------------------------


def make_folder(root, classes=("walk", "run", "fall"), n=10, size=(24, 24), ext=".png"):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            f = np.clip(field(*size, seed=ci * 100 + i) * (0.5 + 0.5 * ci / 2), 0, 1)
            Image.fromarray(apply_colormap(f, "jet")).save(root / c / f"s{i % 5}_{i:03d}{ext}")
    return root


def listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_image_folder_source(tmp_path):
    root = make_folder(tmp_path / "data")
    before = listing(root)
    src = build_source(
        "image_folder", root=str(root), image_size=16, seed=0, cache_dir=tmp_path / "cache"
    )
    assert isinstance(src, ImageFolderSource)
    assert src.class_names == ["fall", "run", "walk"] and src.image_size == 16 and src.channels == 1
    sizes = {s: len(src.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 24, "val": 3, "test": 3}
    x, y = src.split("train")[0]
    assert x.dtype == torch.float32 and x.shape == (1, 16, 16) and isinstance(y, int)
    assert -1 <= x.min() and x.max() <= 1 and x.max() > 0.5
    # second build reads the cache and gives the same tensors
    src2 = ImageFolderSource(root=root, image_size=16, seed=0, cache_dir=tmp_path / "cache")
    assert torch.equal(src2.split("val").x, src.split("val").x)
    assert src2.fingerprint() == src.fingerprint()
    assert listing(root) == before  # nothing written under root


def test_train_val_test_folders_and_classes_option(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", n=6)
    make_folder(root / "test", n=2)
    src = ImageFolderSource(root=root, image_size=16, classes=["walk", "run"], val_fraction=0.2)
    assert src.class_names == ["walk", "run"]
    assert all(f.startswith("test/") for f in src.split("test").files)
    assert len(src.split("test")) == 4
    assert len(src.split("val")) == 2 and all(
        f.startswith("train/") for f in src.split("val").files
    )
    assert set(src.split("train").y.tolist()) == {0, 1}


# -- bad input --------------------------------------------------------------------


def test_bad_inputs_name_the_path(tmp_path):
    for unset in (None, "", "???"):  # the README's troubleshooting line, word for word
        with pytest.raises(UserError, match=r"^data.root is not set: pass data.root=DIR"):
            ImageFolderSource(root=unset)
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as e:
        ImageFolderSource(root=missing)
    assert str(missing) in str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no class folders.*\.png") as e:
        ImageFolderSource(root=empty)
    assert str(empty) in str(e.value)

    root = make_folder(tmp_path / "d1", n=4)
    (root / "sit").mkdir()
    (root / "sit" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds no readable files") as e:
        ImageFolderSource(root=root)
    assert str(root / "sit") in str(e.value)


def test_corrupt_file_strict_and_skip(tmp_path):
    root = make_folder(tmp_path / "d", n=5)
    good = (root / "walk" / "s0_000.png").read_bytes()
    (root / "walk" / "bad.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "run" / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage")
    with pytest.raises(UserError, match="cannot read") as e:
        ImageFolderSource(root=root, image_size=16, val_fraction=0, test_fraction=0)
    assert "bad." in str(e.value) and str(root) in str(e.value)
    with pytest.warns(UserWarning, match="skipped 2 unreadable") as w:
        src = ImageFolderSource(
            root=root, image_size=16, val_fraction=0, test_fraction=0, strict=False
        )
    msg = str(w[0].message)
    assert "walk/bad.png" in msg and "run/bad.mat" in msg
    assert len(src.split("train")) == 15


def test_mixed_sizes_without_resizing(tmp_path):
    root = tmp_path / "d"
    make_folder(root, classes=("a",), n=3, size=(20, 20))
    Image.fromarray(apply_colormap(field(30, 30), "jet")).save(root / "a" / "big.png")
    with pytest.raises(UserError, match="differ in size") as e:
        ImageFolderSource(root=root, image_size=None, val_fraction=0, test_fraction=0)
    assert "big.png is 30x30" in str(e.value) and "20x20" in str(e.value)
    (root / "a" / "big.png").unlink()  # all 20x20 now: no resizing needed
    src = ImageFolderSource(root=root, image_size=None, val_fraction=0, test_fraction=0)
    assert src.image_size == 20 and src.split("train").x.shape == (3, 1, 20, 20)


def test_unreadable_mat_names_file(tmp_path):
    p = tmp_path / "x.mat"
    scipy.io.savemat(p, {"names": np.array(["a", "b"])})
    with pytest.raises(UserError, match="no 2-D numeric array") as e:
        load_spectrogram(p)
    assert str(p) in str(e.value)
    p2 = tmp_path / "y.mat"
    p2.write_bytes(b"\x00" * 50)
    with pytest.raises(UserError, match="cannot read") as e:
        load_spectrogram(p2)
    assert str(p2) in str(e.value)


def test_jpeg_in_memory_is_not_grey():
    buf = io.BytesIO()
    Image.fromarray(apply_colormap(field(), "viridis")).save(buf, "JPEG", quality=90)
    buf.seek(0)
    assert not is_grey(np.asarray(Image.open(buf).convert("RGB")))


@pytest.mark.slow  # imports Lightning + Hydra (~6 s on 2 cores)
def test_real_config_builds_the_datamodule(tmp_path):
    """conf/data/image_folder.yaml composed inside train.yaml -> DataModule -> a batch."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    root = make_folder(tmp_path / "data", n=5, size=(20, 20))
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            config_name="train",
            # only the data group matters here: drop the others (composed in their own tests)
            overrides=[
                *(f"~{g}" for g in ("vae", "model", "diffusion", "trainer", "logger", "callbacks")),
                "data=image_folder",
                f"data.root={root}",
                "data.image_size=16",
                "data.batch_size=4",
                f"data.split_file={tmp_path / 'run' / 'split.json'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
            ],
        )
    dm = instantiate(cfg.data)
    assert dm.class_names == ["fall", "run", "walk"] and dm.image_size == 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 1, 16, 16) and batch["y"].dtype == torch.long
    assert (tmp_path / "run" / "split.json").exists()
    assert any((tmp_path / "cache" / "image_folder").glob("image_folder-*.npz"))
