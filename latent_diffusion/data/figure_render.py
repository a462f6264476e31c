"""Spectrogram figures drawn the way plotting libraries save them, for the figure reader's
tests and its measured round-trip accuracy (docs/data.md).

A figure: a white or grey margin, the colour-mapped plot inside a near-black axes frame,
outward (or inward) ticks with tick labels, a title, axis labels, and optionally a
colour bar with its own frame. Saved as PNG or JPEG at a given quality. The scalar
drawn is known, so the reader's crop and value can be checked against it.

`python -m latent_diffusion.data.figure_render` prints the round-trip table.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from latent_diffusion.data.colormaps import apply_colormap


@dataclass
class FigureStyle:
    plot_h: int = 128
    plot_w: int = 128
    margin_top: int = 26  # room for the title
    margin_left: int = 44  # tick labels and the y label
    margin_bottom: int = 34  # tick labels and the x label
    margin_right: int = 16
    frame: int = 1  # frame line width, px
    background: tuple[int, int, int] = (255, 255, 255)
    colorbar: bool = True
    ticks_inward: bool = False
    title: str = "walk, subject 3"

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the plot inside the frame."""
        return (
            self.margin_top + self.frame,
            self.margin_left + self.frame,
            self.plot_h,
            self.plot_w,
        )


def spectrogram_like(h: int, w: int, seed: int) -> np.ndarray:
    """A scalar (h, w) in [0, 1] with what makes real figures hard: a saturated zero-Doppler
    line, large dark (zero) regions, a periodic limb signature that runs into the top and
    bottom edges, and speckle."""
    rng = np.random.default_rng(seed)
    v = np.linspace(1, -1, h)[:, None]
    t = np.linspace(0, 1, w)[None, :]
    cadence = 2 + 2 * rng.random()
    torso = 0.3 * np.sin(2 * np.pi * cadence * t + rng.random() * 6)
    limbs = 1.3 * np.sin(2 * np.pi * cadence * t + rng.random() * 6)  # beyond +-1: hits the edges
    x = 0.8 * np.exp(-(((v - torso) / 0.08) ** 2)) + 0.5 * np.exp(-(((v - limbs) / 0.05) ** 2))
    x = x * rng.exponential(1.0, (h, w)) ** 0.5  # speckle
    x[np.abs(v[:, 0]) < 2.5 / h] = 1.0  # zero-Doppler clutter: saturated
    x[:, : w // 8] *= 0.05  # a dark region (the radar saw nothing)
    x[rng.random((h, w)) < 0.25] = 0.0  # noise floor clipped to the dynamic range
    return np.clip(x, 0.0, 1.0)


def render_figure(
    scalar: np.ndarray, cmap: str = "jet", style: FigureStyle | None = None
) -> Image.Image:
    """scalar (H, W) in [0, 1] -> an RGB figure with the plot at style.box, pixel for pixel."""
    st = style or FigureStyle(plot_h=scalar.shape[0], plot_w=scalar.shape[1])
    bar_w, bar_gap = (12, 10) if st.colorbar else (0, 0)
    width = (
        st.margin_left
        + 2 * st.frame
        + st.plot_w
        + bar_gap
        + bar_w
        + 2 * st.frame
        + 36 * st.colorbar
    )
    width += st.margin_right
    height = st.margin_top + 2 * st.frame + st.plot_h + st.margin_bottom
    im = Image.new("RGB", (width, height), st.background)
    top, left, ph, pw = st.box
    im.paste(Image.fromarray(apply_colormap(scalar, cmap)), (left, top))
    d = ImageDraw.Draw(im)
    black = (0, 0, 0)
    f = st.frame
    if f:  # frame=0: spines hidden
        d.rectangle(
            [left - f, top - f, left + pw + f - 1, top + ph + f - 1], outline=black, width=f
        )
    # ticks (5 per axis) with labels, as matplotlib draws them
    tick = 4
    for k in range(5):
        x = left + round(k * (pw - 1) / 4)
        y = top + round(k * (ph - 1) / 4)
        if st.ticks_inward:
            d.line([x, top + ph - 1, x, top + ph - tick], fill=black)
            d.line([left, y, left + tick - 1, y], fill=black)
        else:
            d.line([x, top + ph + f, x, top + ph + f + tick - 1], fill=black)
            d.line([left - f - tick, y, left - f - 1, y], fill=black)
        d.text((x - 6, top + ph + f + tick + 2), f"{k * 0.5:.1f}", fill=black)
        d.text((left - f - tick - 26, y - 5), f"{4 - 2 * k:+d}", fill=black)
    d.text((left + pw // 2 - 20, height - 12), "time (s)", fill=black)
    d.text((2, top + ph // 2 - 30), "v", fill=black)
    d.text((left + pw // 2 - 40, 6), st.title, fill=black)
    if st.colorbar:
        bx = left + pw + f + bar_gap
        grad = np.linspace(1, 0, ph)[:, None].repeat(bar_w, 1)
        im.paste(Image.fromarray(apply_colormap(grad, cmap)), (bx + f, top))
        d.rectangle([bx, top - f, bx + bar_w + 2 * f - 1, top + ph + f - 1], outline=black, width=f)
        for k in range(3):
            y = top + round(k * (ph - 1) / 2)
            d.line([bx + bar_w + 2 * f, y, bx + bar_w + 2 * f + 3, y], fill=black)
            d.text((bx + bar_w + 2 * f + 5, y - 5), f"{-20 * k}", fill=black)
    return im


def encode(im: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """The figure as a PNG or JPEG file's bytes (JPEG with PIL's default 4:2:0 subsampling)."""
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG")
    else:
        im.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def roundtrip_table(
    seeds=(0, 1, 2),
    cmaps=("jet", "parula", "viridis"),
    formats=(("png", 0), ("jpeg", 95), ("jpeg", 90), ("jpeg", 75)),
    tmp=None,
):
    """{(cmap, format label): (median MAE over seeds, max crop error px)} through the reader."""
    import tempfile
    from pathlib import Path

    from latent_diffusion.data.readers import read_spectrogram

    out = {}
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        for cmap in cmaps:
            for fmt, q in formats:
                maes, crop_err = [], 0
                for seed in seeds:
                    truth = spectrogram_like(128, 128, seed)
                    st = FigureStyle(
                        background=(255, 255, 255) if seed % 2 == 0 else (235, 235, 235)
                    )
                    path = Path(d) / f"{cmap}_{seed}.{'png' if fmt == 'png' else 'jpg'}"
                    path.write_bytes(encode(render_figure(truth, cmap, st), fmt, q))
                    x, info = read_spectrogram(path, value_kind="unit")
                    crop_err = max(crop_err, box_error(info.get("plot_box"), st.box))
                    if x.shape == truth.shape:
                        # the truth as drawn: the nearest of the map's 256 entries
                        drawn = np.rint(truth * 255) / 255
                        maes.append(float(np.abs(x - drawn).mean()))
                    else:
                        maes.append(float("nan"))
                label = "PNG" if fmt == "png" else f"JPEG q{q}"
                out[(cmap, label)] = (float(np.median(maes)), crop_err)
    return out


def box_error(found, truth) -> int:
    """Largest difference in px between two (top, left, height, width) boxes."""
    if found is None:
        return 10**6
    return int(max(abs(int(a) - int(b)) for a, b in zip(found, truth, strict=True)))


if __name__ == "__main__":
    table = roundtrip_table()
    print("| colour map | file | MAE (median of 3 figures) | crop error (px, max) |")
    print("|---|---|---|---|")
    for (cmap, label), (mae, err) in table.items():
        print(f"| {cmap} | {label} | {mae:.4f} | {err} |")
