"""Colour figures as plotting libraries save them: the plot area is found from the figure's
geometry (axes frame, margin), whatever the data inside, and the scalar comes back.

The figures (data/figure_render.py) have what made the old data-driven crop fail: a
saturated zero-Doppler line, dark regions, noise-floor pixels, a signature running into
the frame, JPEG down to quality 75, a colour bar, ticks in or out, white or grey margins.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from latent_diffusion.data.figure_render import (
    FigureStyle,
    box_error,
    encode,
    render_figure,
    spectrogram_like,
)
from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.plot_area import plot_box
from latent_diffusion.data.readers import read_spectrogram
from latent_diffusion.utils.errors import UserError

FORMATS = [("png", 0), ("jpeg", 95), ("jpeg", 90), ("jpeg", 75)]
# targets of the reader (docs/data.md): mean absolute error in [0, 1] units
MAE_TARGET = {0: 0.006, 95: 0.02, 90: 0.02, 75: 0.03}


def _style(seed: int, **kw) -> FigureStyle:
    """Layouts vary with the seed: margin colour, tick direction, frame width, colour bar."""
    return FigureStyle(
        background=(255, 255, 255) if seed % 2 == 0 else (235, 235, 235),
        ticks_inward=seed % 3 == 1,
        frame=1 + seed % 2,
        colorbar=seed % 4 != 3,
        **kw,
    )


def _write(tmp_path, name, truth, cmap, fmt, q, style):
    path = tmp_path / f"{name}.{'png' if fmt == 'png' else 'jpg'}"
    path.write_bytes(encode(render_figure(truth, cmap, style), fmt, q))
    return path


@pytest.mark.parametrize("cmap", ["jet", "parula", "viridis"])
@pytest.mark.parametrize("fmt,q", FORMATS)
def test_plot_area_exact_and_values_recovered(tmp_path, cmap, fmt, q):
    for seed in (0, 1):
        truth = spectrogram_like(128, 128, seed)
        st = _style(seed)
        path = _write(tmp_path, f"s{seed}", truth, cmap, fmt, q, st)
        x, info = read_spectrogram(path, value_kind="unit")
        assert info["plot_box"] == list(st.box), (seed, info)  # 0 px crop error
        assert info["plot_box_from"] == "frame" and info["colormap"] == cmap
        drawn = np.rint(truth * 255) / 255  # the nearest of the map's 256 entries, as drawn
        mae = float(np.abs(x - drawn).mean())
        assert mae <= MAE_TARGET[q], (seed, mae)
        # the saturated pixels (the zero-Doppler line) come back bright, not filled from their
        # dark neighbours (JPEG loses some isolated ones among noise-floor zeros)
        assert (x[drawn >= 1.0] > 0.5).mean() >= {0: 1.0, 95: 0.75, 90: 0.75, 75: 0.6}[q]


def test_every_layout_crops_exactly():
    """A wider sweep of layouts on the geometry alone: all maps, PNG and JPEG 75-95, both
    margin colours, ticks in and out, 1 and 2 px frames, with and without a colour bar,
    a non-square plot."""
    for cmap, (fmt, q), seed in itertools.product(["jet", "parula", "viridis"], FORMATS, range(4)):
        truth = spectrogram_like(128, 96 if seed % 2 else 128, seed)
        st = _style(seed, plot_h=128, plot_w=truth.shape[1])
        img = Image.open(io.BytesIO(encode(render_figure(truth, cmap, st), fmt, q))).convert("RGB")
        box, how = plot_box(np.asarray(img))
        assert box_error(box, st.box) == 0, (cmap, fmt, q, seed, box, st.box)


def test_figure_without_a_frame_is_cropped_by_its_margin(tmp_path):
    truth = spectrogram_like(128, 128, 2)
    st = FigureStyle(frame=0)
    x, info = read_spectrogram(
        _write(tmp_path, "f", truth, "jet", "jpeg", 90, st), value_kind="unit"
    )
    assert info["plot_box_from"] == "margin" and info["plot_box"] == list(st.box)


def test_plot_box_given_is_used_and_checked(tmp_path):
    truth = spectrogram_like(128, 128, 0)
    st = FigureStyle()
    path = _write(tmp_path, "g", truth, "viridis", "png", 0, st)
    x, info = read_spectrogram(path, value_kind="unit", plot_box=list(st.box))
    assert info["plot_box_from"] == "given" and np.abs(x - np.rint(truth * 255) / 255).max() < 0.005
    with pytest.raises(UserError, match=r"data.plot_box=\[0, 0, 500, 500\] does not fit .*g.png"):
        read_spectrogram(path, plot_box=[0, 0, 500, 500])


def test_no_plot_area_is_one_clear_error(tmp_path):
    """A figure of scattered coloured marks and no plot: named, with data.plot_box as the fix."""
    im = Image.new("RGB", (200, 150), (255, 255, 255))
    for k in range(40):  # 3x3 marks: colour enough not to pass for a grey image
        im.paste(Image.new("RGB", (3, 3), (200, 0, 0)), (10 + (k % 10) * 18, 10 + (k // 10) * 30))
    path = tmp_path / "empty.png"
    im.save(path)
    with pytest.raises(UserError, match=r"empty.png: no plot area found.*data.plot_box"):
        read_spectrogram(path)


def _folder(tmp_path, odd: dict[str, FigureStyle]) -> None:
    for cls in ("walk", "run"):
        (tmp_path / "figs" / cls).mkdir(parents=True)
        for i in range(4):
            name = f"{cls}/{i}"
            st = odd.get(name, FigureStyle())
            truth = spectrogram_like(st.plot_h, st.plot_w, i)
            img = render_figure(truth, "jet", st)
            (tmp_path / "figs" / f"{name}.jpg").write_bytes(encode(img, "jpeg", 90))


def test_data_set_with_one_odd_layout_names_it(tmp_path):
    """One crop size per data set: a figure whose plot is another shape is named; with
    strict=true (the default) that is an error, with strict=false a warning."""
    _folder(tmp_path, {"run/2": FigureStyle(plot_h=128, plot_w=64)})
    kw = dict(root=tmp_path / "figs", image_size=32, val_fraction=0, test_fraction=0)
    with pytest.raises(
        UserError, match=r"1 of 8 figures .* another shape .*128x128 px \(run/2.jpg 128x64\)"
    ):
        ImageFolderSource(**kw)
    with pytest.warns(UserWarning, match=r"1 of 8 figures .* another size .*run/2.jpg 128x64"):
        src = ImageFolderSource(strict=False, **kw)
    assert src.crop_report == {"size": [128, 128], "differ": ["run/2.jpg"]}


def test_data_set_of_one_layout_is_silent(tmp_path, recwarn):
    _folder(tmp_path, {})
    src = ImageFolderSource(root=tmp_path / "figs", image_size=32, val_fraction=0, test_fraction=0)
    assert src.crop_report == {"size": [128, 128], "differ": []}
    assert not [w for w in recwarn if "figures" in str(w.message)]


def test_inspect_shows_crops_maps_and_the_odd_file(tmp_path):
    """`inspect` on a folder of figures, as a user runs it: counts per class, the crop sizes
    with the odd file named, the colour maps, and a preview grid of the model inputs."""
    from PIL import Image

    from tests.cli import run_cli

    _folder(tmp_path, {"run/2": FigureStyle(plot_h=128, plot_w=120)})  # 6% wider: a warning
    out = tmp_path / "inspect"
    args = [f"data.root={tmp_path / 'figs'}", "data.image_size=32", "data.val_fraction=0.25"]
    args += [f"out_dir={out}", f"paths.root_dir={tmp_path}", "data.test_fraction=0"]
    proc = run_cli("inspect", "data=image_folder", *args, cwd=tmp_path)
    text = proc.stdout
    assert "image_folder: 2 classes; train/val/test 6/2/0; 1x32x32" in text
    assert "plot crops (px): 128x128: 7, 128x120: 1" in text
    assert "differing from the majority: run/2.jpg" in text
    assert "colour maps: jet 8" in text
    grid = np.asarray(Image.open(out / "data_preview.png"))
    # each model input follows its original figure (RGB, squeezed to the tile)
    assert grid.shape == (2 * 32, 2 * 6 * 32, 3)
    original, model_input = grid[:32, :32].astype(float), grid[:32, 32:64].astype(float)
    assert np.abs(original - original.mean(-1, keepdims=True)).mean() > 10  # jet: colour
    assert (model_input == model_input[..., :1]).all() and model_input.std() > 10  # grey input
    assert (grid[:32, 6 * 32 :] == 0).all()  # 3 training files per class: the rest is padding
