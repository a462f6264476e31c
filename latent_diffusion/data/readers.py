"""Readers for real micro-Doppler data: images, .npy/.npz arrays, MATLAB .mat files.

Every reader ends in the simulator's convention, so real and simulated data mix: a
float32 (H, W) image in [0, 1] that is 20 log10(|S| / max) clipped to
[-D, 0] dB and mapped linearly to [0, 1], rows = Doppler (+ towards the radar
at the top), columns = time. Images already encode that scalar (grey level
or colour-map position, see colormaps.py); arrays are turned into it here.

`ImageFolderSource` (data=image_folder, image_folder.py) reads
`root/[train|val|test/]<class>/<files>` with these readers.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latent_diffusion.data import plot_area
from latent_diffusion.data.colormaps import invert_colormap, is_grey
from latent_diffusion.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_EXTS = (".npy", ".npz")
MAT_EXTS = (".mat",)
ALL_EXTS = IMAGE_EXTS + ARRAY_EXTS + MAT_EXTS
VALUE_KINDS = ("auto", "magnitude", "db", "power", "unit")


# ----------------------------------------------------------------------------
# raw readers: file -> 2-D array (or an already normalised image)
# ----------------------------------------------------------------------------


def _pick_2d(named: dict[str, np.ndarray], path: Path, variable: str | None) -> np.ndarray:
    """The named variable, else the largest 2-D numeric array (singleton dims squeezed)."""
    cands = {}
    for k, v in named.items():
        v = np.asarray(v)
        if v.dtype.kind in "biufc" and np.squeeze(v).ndim == 2:
            cands[k] = np.squeeze(v)
    if variable is not None:
        if variable not in named:
            raise UserError(
                f"{path} has no variable '{variable}'; it holds {sorted(named)} (set data.variable)"
            )
        if variable not in cands:
            shape = np.shape(named[variable])
            raise UserError(
                f"{path}: variable '{variable}' (shape {shape}) is not a 2-D numeric array"
            )
        return cands[variable]
    if not cands:
        shapes = {k: np.shape(v) for k, v in named.items()}
        raise UserError(
            f"{path} holds no 2-D numeric array (found {shapes}); save one spectrogram "
            "(Doppler x time) per file, or name it with data.variable"
        )
    if len(cands) > 1:
        # a mask, a second channel or a coordinate grid beside the spectrogram: taking the
        # first or the largest would train on the wrong array without a word
        shapes = ", ".join(f"'{k}' {v.shape}" for k, v in cands.items())
        raise UserError(
            f"{path} holds several 2-D arrays that could be the spectrogram ({shapes}); "
            f"name the one to read with data.variable=<name> (e.g. "
            f"data.variable={next(iter(cands))})"
        )
    return next(iter(cands.values()))


def _read_npy(path: Path, variable: str | None) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return _pick_2d({"array": np.load(path, allow_pickle=False)}, path, None)
    with np.load(path, allow_pickle=False) as z:
        named = {k: z[k] for k in z.files}
    return _pick_2d(named, path, variable)


def _h5_to_numpy(ds) -> np.ndarray:
    """A MATLAB v7.3 dataset -> numpy in MATLAB's (row, column) order.

    HDF5 stores MATLAB's column-major arrays with the axes reversed, so a
    (Doppler x time) MATLAB matrix reads as (time x Doppler): transpose back.
    Complex values are a compound type with fields 'real' and 'imag'.
    """
    a = ds[()]
    if a.dtype.names and {"real", "imag"} <= set(a.dtype.names):
        a = a["real"] + 1j * a["imag"]
    return np.asarray(a).T


def mat_variables(path: Path) -> dict[str, np.ndarray]:
    """A MATLAB file's numeric variables by name, v5 (scipy) or v7.3 (HDF5: MATLAB's
    row/column order restored, complex compounds made complex)."""
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):  # MATLAB v7.3 (-v7.3) files are HDF5
        named = {}
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and not name.startswith("#refs#"):
                    cls = obj.attrs.get("MATLAB_class", b"double")
                    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
                    if cls not in ("char", "cell", "struct", "function_handle"):
                        named[name] = _h5_to_numpy(obj)

            f.visititems(visit)
        return named
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}


def _read_mat(path: Path, variable: str | None) -> np.ndarray:
    return _pick_2d(mat_variables(path), path, variable)


def _read_image(
    path: Path,
    colormaps: Sequence[str],
    max_residual: float,
    crop_to_plot: bool,
    given_box: Sequence[int] | None = None,
):
    """Image file -> (array, kind, info). kind 'unit' (already in [0, 1]) or 'raw' (float TIFF).

    A colour figure is cropped to its plot area first, found from the figure's geometry
    (plot_area.py: the axes frame, else the block inside the margin), then inverted through
    its colour map; pixels inside the plot that are off the map (inward ticks, grid lines,
    annotations) are filled from their neighbours."""
    with Image.open(path) as im:
        im.load()  # decode now: a truncated file fails here, not later in a worker
        mode = im.mode
        if mode == "F":  # float TIFF: values as stored, normalised like an array
            return np.asarray(im, dtype=np.float64), "raw", {"mode": mode}
        if mode.startswith("I"):  # 16-bit grey (PIL opens it as I;16 or I)
            a = np.asarray(im, dtype=np.float64)
            if a.min() >= 0 and a.max() <= 65535:
                return a / 65535.0, "unit", {"mode": mode}
            return a, "raw", {"mode": mode}
        if mode in ("1", "L", "LA"):
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0, "unit", {"mode": mode}
        rgba = np.asarray(im.convert("RGBA"))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] < 128] = 255  # transparent = background, masked like white
    if is_grey(rgb):
        # grey in an RGB container: every channel holds the scalar
        return rgb.astype(np.float64).mean(-1) / 255.0, "unit", {"mode": mode, "grey": True}
    info = {"mode": mode}
    if crop_to_plot:
        (top, left, h, w), how = plot_area.plot_box(rgb, given_box, path)
        rgb = rgb[top : top + h, left : left + w]
        info.update(plot_box=[top, left, h, w], plot_box_from=how)
    # inside a found plot box every pixel is plot: no blob selection
    scalar, valid, name = invert_colormap(
        rgb, names=tuple(colormaps), max_residual=max_residual, keep_largest=not crop_to_plot
    )
    info.update(colormap=name, masked_fraction=float(1.0 - valid.mean()))
    return scalar.astype(np.float64), "unit", info


# ----------------------------------------------------------------------------
# normalisation: any value kind -> [0, 1] on the simulator's dB scale
# ----------------------------------------------------------------------------


def guess_value_kind(a: np.ndarray) -> str:
    """complex -> magnitude; 8/16-bit integers or bool -> unit; negatives -> dB; else magnitude."""
    if np.iscomplexobj(a):
        return "magnitude"
    if a.dtype in (np.uint8, np.uint16, np.bool_):
        return "unit"
    return "db" if np.nanmin(a) < 0 else "magnitude"


def db_normalise(
    a: np.ndarray, value_kind: str = "auto", dynamic_range_db: float = 45.0, path="array"
):
    """Spectrogram values -> float32 in [0, 1]: 20 log10(|S| / max) clipped to [-D, 0] dB, / D + 1.

    magnitude: |S| (complex STFT or its modulus); power: |S|^2 (10 log10);
    db: any dB scale (made relative to its max); unit: already in [0, 1].
    """
    if value_kind not in VALUE_KINDS:
        raise UserError(f"value_kind='{value_kind}' is not one of {VALUE_KINDS}")
    if dynamic_range_db <= 0:
        raise UserError(f"dynamic_range_db={dynamic_range_db} must be > 0 (typically 40-50 dB)")
    kind = guess_value_kind(a) if value_kind == "auto" else value_kind
    if kind == "unit":
        if a.dtype in (np.uint8, np.uint16):
            a = a / float(np.iinfo(a.dtype).max)
        out = np.asarray(a, dtype=np.float64)
        if np.isnan(out).any():
            raise UserError(f"{path} contains NaN values; fix or remove the file")
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    if np.isnan(np.abs(a)).any() or np.isposinf(np.abs(a) if kind != "db" else a).any():
        raise UserError(f"{path} contains NaN or +inf values; fix or remove the file")
    if kind == "db":
        db = np.asarray(a, dtype=np.float64)
        db = db - db[np.isfinite(db)].max()  # -inf (log of 0) stays -inf -> clipped to -D
    else:
        m = np.abs(a).astype(np.float64)
        peak = m.max()
        if peak <= 0:
            raise UserError(f"{path} is all zeros: no spectrogram to normalise; remove the file")
        ratio = np.maximum(m / peak, 1e-30)
        db = (10.0 if kind == "power" else 20.0) * np.log10(ratio)
    db = np.clip(db, -dynamic_range_db, 0.0)
    return ((db + dynamic_range_db) / dynamic_range_db).astype(np.float32)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (size, size) with an antialiasing filter (no aliasing of thin Doppler lines)."""
    if x.shape == (size, size):
        return x.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]  # (1, 1, H, W)
    # antialias only matters (and is only defined in torch) for downsampling
    down = size < x.shape[0] or size < x.shape[1]
    t = torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False, antialias=down
    )
    return t[0, 0].clamp_(0.0, 1.0).numpy()


def read_spectrogram(
    path: str | os.PathLike,
    image_size: int | None = None,
    value_kind: str = "auto",
    flip_doppler: bool = False,
    transpose: bool = False,
    dynamic_range_db: float = 45.0,
    variable: str | None = None,
    colormaps: Sequence[str] = ("jet", "parula", "viridis"),
    max_residual: float = 40.0,
    crop_to_plot: bool = True,
    plot_box: Sequence[int] | None = None,
) -> tuple[np.ndarray, dict]:
    """One file -> (float32 (H, W) in [0, 1], info dict). Errors name the file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ALL_EXTS:
        raise UserError(f"{path}: unsupported file type '{ext}'; supported: {' '.join(ALL_EXTS)}")
    try:
        if ext in IMAGE_EXTS:
            a, kind, info = _read_image(path, colormaps, max_residual, crop_to_plot, plot_box)
            kind = "unit" if kind == "unit" else value_kind
        else:
            a = _read_npy(path, variable) if ext in ARRAY_EXTS else _read_mat(path, variable)
            kind, info = value_kind, {}
    except UserError:
        raise
    except Exception as err:  # PIL / numpy / scipy / h5py raise many types for a bad file
        raise UserError(
            f"cannot read {path}: {type(err).__name__}: {err}; the file is corrupt, truncated "
            "or not what its extension says: replace or remove it (or set data.strict=false to "
            "skip it)"
        ) from None
    info["value_kind"] = guess_value_kind(a) if kind == "auto" else kind
    x = db_normalise(a, kind, dynamic_range_db, path)
    if transpose:
        x = x.T
    if flip_doppler:
        x = x[::-1]  # rows = Doppler: make + (towards the radar) the top row
    if image_size is not None:
        x = resize(x, int(image_size))
    return np.ascontiguousarray(x, dtype=np.float32), info


# ----------------------------------------------------------------------------
# files that vanish: symbolic links whose target is gone
# ----------------------------------------------------------------------------


def dangling_links(folder: Path, exts: Sequence[str]) -> list[Path]:
    """Links with a data file's name whose target is gone: a listing filtered on is_file()
    drops them without a word, so a data set shrinks silently when a mount is missing."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in exts and p.is_symlink() and not p.exists()
    )


def report_dangling(links: Sequence[Path], strict: bool) -> None:
    """strict: a UserError naming them; else one warning listing what is skipped."""
    if not links:
        return
    shown = ", ".join(str(p) for p in links[:5]) + (
        f" and {len(links) - 5} more" if len(links) > 5 else ""
    )
    if strict:
        raise UserError(
            f"{len(links)} data files are symbolic links whose target is gone: {shown}; restore "
            "the targets (a missing mount?) or remove the links (data.strict=false skips them)"
        )
    warnings.warn(
        f"skipped {len(links)} symbolic links whose target is gone (strict=false): {shown}",
        stacklevel=2,
    )


# ----------------------------------------------------------------------------
# image stacks with labels (a samples.npz of generated images, guided-diffusion's format)
# ----------------------------------------------------------------------------


def grey_stack(x: np.ndarray, path, key: str = "arr_0") -> np.ndarray:
    """(N, H, W), (N, H, W, 1) or grey (N, H, W, 3) -> (N, H, W). Channel-first stacks are
    named and refused, never reshaped: (N, 1, H, W) read as channel-last would silently
    become (N, 1, H) slices."""
    if x.ndim == 3:
        return x
    if x.ndim != 4:
        raise UserError(
            f"{path}: {key} has shape {x.shape}; expected images (N, H, W) or (N, H, W, C)"
        )
    if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        raise UserError(
            f"{path}: {key} is channel-first (N, C, H, W) = {x.shape}; this reader takes "
            f"channel-last "
            f"(N, H, W, C), as `sample` and guided-diffusion write: save np.transpose({key}, (0, "
            f"2, 3, 1))"
        )
    if x.shape[-1] == 1:
        return x[..., 0]
    if (
        x.shape[-1] == 3
        and np.array_equal(x[..., 0], x[..., 1])
        and np.array_equal(x[..., 0], x[..., 2])
    ):
        return x[..., 0]  # grey stored as RGB: every channel holds the value
    raise UserError(
        f"{path}: {key} has shape {x.shape}: {x.shape[-1]} channels that are not one grey value; "
        "spectrograms are single-channel (N, H, W) or (N, H, W, 1)"
    )


def check_labels(
    y: np.ndarray, n_images: int, n_classes: int, path, key: str = "arr_1"
) -> np.ndarray:
    """Labels that index `n_classes` classes, one per image; else a UserError naming the fault.
    A negative label would otherwise index from the end of the class list without a word."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_images:
        raise UserError(
            f"{path}: {key} holds {y.shape} labels for {n_images} images; give one label per image"
        )
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise UserError(f"{path}: {key} labels are {y.dtype}, not integer class indices")
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= n_classes)]
    if bad.size:
        raise UserError(
            f"{path}: {key} has labels outside 0..{n_classes - 1} (e.g. "
            f"{sorted(set(bad.tolist()))[:5]}) "
            f"for {n_classes} class names; labels index the class list"
        )
    return y


def load_spectrogram(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """One file -> float32 (H, W) in [0, 1]; keyword options as in read_spectrogram."""
    return read_spectrogram(path, **kwargs)[0]
