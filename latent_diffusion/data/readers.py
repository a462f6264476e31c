"""Readers for real micro-Doppler data: images, .npy/.npz arrays, MATLAB .mat files.

Every reader ends in the simulator's convention (design.md section 6): a
float32 (H, W) image in [0, 1] that is 20 log10(|S| / max) clipped to
[-D, 0] dB and mapped linearly to [0, 1], rows = Doppler (+ towards the radar
at the top), columns = time. Images already encode that scalar (grey level
or colour-map position, see colormaps.py); arrays are turned into it here.

`ImageFolderSource` (data=image_folder) reads `root/[train|val|test/]<class>/<files>`.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from latent_diffusion.data.colormaps import invert_colormap, is_grey, valid_bbox
from latent_diffusion.data.source import SPLITS, register_source
from latent_diffusion.data.splits import load_split, save_split, stratified_split
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_write_bytes, stable_hash

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
    return max(cands.values(), key=lambda a: a.size)


def _read_npy(path: Path, variable: str | None) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return _pick_2d({"array": np.load(path, allow_pickle=False)}, path, None)
    with np.load(path, allow_pickle=False) as z:
        named = {k: z[k] for k in z.files}
    if variable is None and named:
        # first array of the archive (np.savez order), as documented
        first = next(iter(named))
        return _pick_2d({first: named[first]}, path, None)
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


def _read_mat(path: Path, variable: str | None) -> np.ndarray:
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
        return _pick_2d(named, path, variable)
    named = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    return _pick_2d(named, path, variable)


def _read_image(path: Path, colormaps: Sequence[str], max_residual: float, crop_to_plot: bool):
    """Image file -> (array, kind, info). kind 'unit' (already in [0, 1]) or 'raw' (float TIFF)."""
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
    scalar, valid, name = invert_colormap(rgb, names=tuple(colormaps), max_residual=max_residual)
    if crop_to_plot:
        rows, cols = valid_bbox(valid)
        scalar, valid = scalar[rows, cols], valid[rows, cols]
    info = {"mode": mode, "colormap": name, "masked_fraction": float(1.0 - valid.mean())}
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


def to_unit(a: np.ndarray, value_kind: str = "auto", dynamic_range_db: float = 45.0, path="array"):
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
) -> tuple[np.ndarray, dict]:
    """One file -> (float32 (H, W) in [0, 1], info dict). Errors name the file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ALL_EXTS:
        raise UserError(f"{path}: unsupported file type '{ext}'; supported: {' '.join(ALL_EXTS)}")
    try:
        if ext in IMAGE_EXTS:
            a, kind, info = _read_image(path, colormaps, max_residual, crop_to_plot)
            kind = "unit" if kind == "unit" else value_kind
        else:
            a = _read_npy(path, variable) if ext in ARRAY_EXTS else _read_mat(path, variable)
            kind, info = value_kind, {}
    except UserError:
        raise
    except Exception as err:  # PIL / numpy / scipy / h5py raise many types for a bad file
        raise UserError(
            f"cannot read {path}: {type(err).__name__}: {err}; the file is corrupt, truncated "
            "or not what its extension says: replace or remove it (or set data.strict=false to skip it)"
        ) from None
    info["value_kind"] = guess_value_kind(a) if kind == "auto" else kind
    x = to_unit(a, kind, dynamic_range_db, path)
    if transpose:
        x = x.T
    if flip_doppler:
        x = x[::-1]  # rows = Doppler: make + (towards the radar) the top row
    if image_size is not None:
        x = resize(x, int(image_size))
    return np.ascontiguousarray(x, dtype=np.float32), info


def load_spectrogram(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """One file -> float32 (H, W) in [0, 1]; keyword options as in read_spectrogram."""
    return read_spectrogram(path, **kwargs)[0]


# ----------------------------------------------------------------------------
# image-folder source: root/[train|val|test/]<class>/<files>
# ----------------------------------------------------------------------------


class SpectrogramTensors(Dataset):
    """Preloaded items: x float32 (1, H, W) in [-1, 1], y int."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, files: list[str]):
        self.x, self.y, self.files = x, y, files  # (N, 1, H, W), (N,), N relative paths

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _visible_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _files_in(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in exts
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@register_source("image_folder")
class ImageFolderSource:
    """Real spectrograms from class folders; splits from train/val/test folders or drawn (seeded).

    Nothing is ever written under `root`: the split file and the cache must live elsewhere.
    """

    channels = 1

    def __init__(
        self,
        root,
        image_size: int | None = 64,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] | None = None,
        value_kind: str = "auto",
        flip_doppler: bool = False,
        transpose: bool = False,
        dynamic_range_db: float = 45.0,
        strict: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        split_file=None,
        subject_regex: str | None = None,
        cache_dir=None,
        variable: str | None = None,
        colormaps: Sequence[str] = ("jet", "parula", "viridis"),
        max_residual: float = 40.0,
        crop_to_plot: bool = True,
        **_,
    ):
        if root is None or str(root) in ("", "???"):
            raise UserError("data.root is not set: pass data.root=DIR (DIR/<class>/<files>)")
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise UserError(
                f"data root {self.root} does not exist or is not a folder; set data.root to a "
                "folder laid out as DIR/[train|val|test/]<class>/<files>"
            )
        if isinstance(extensions, str):
            extensions = [extensions]
        exts = tuple(
            e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or ALL_EXTS)
        )
        self.read_kwargs = dict(
            image_size=image_size, value_kind=value_kind, flip_doppler=bool(flip_doppler),
            transpose=bool(transpose), dynamic_range_db=float(dynamic_range_db), variable=variable,
            colormaps=tuple(colormaps), max_residual=float(max_residual), crop_to_plot=bool(crop_to_plot),
        )  # fmt: skip
        to_unit(np.ones((1, 1)), value_kind, dynamic_range_db)  # validate the options up front
        self.strict = bool(strict)
        files, self.class_names, self.layout = self._discover(exts, classes)
        self._class_of = {rel: c for rel, c in files}
        mapping = self._split(files, val_fraction, test_fraction, seed, split_file, subject_regex)
        self.split_mapping = mapping
        self._fp = {
            "source": "image_folder",
            "root": str(self.root.resolve()),
            "class_names": self.class_names,
            "files": stable_hash(
                [
                    (r, (self.root / r).stat().st_size, (self.root / r).stat().st_mtime_ns)
                    for s in SPLITS
                    for r in mapping[s]
                ]
            ),
            "split": stable_hash(mapping),
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.read_kwargs.items()},
        }
        self._data = self._load_all(mapping, cache_dir)

    # -- discovery --------------------------------------------------------

    def _discover(self, exts, classes):
        root = self.root
        looked = f"looked for {' '.join(exts)}"
        if (root / "train").is_dir():
            layout, bases = "split_folders", {s: root / s for s in SPLITS if (root / s).is_dir()}
        else:
            layout, bases = "class_folders", {None: root}
        train_base = bases.get("train", root)
        found = [d.name for d in _visible_dirs(train_base)]
        if not found:
            loose = _files_in(train_base, exts)
            hint = (
                f" ({len(loose)} files lie directly in it: move them into one folder per class)"
                if loose
                else ""
            )
            raise UserError(
                f"no class folders in {train_base}{hint}; expected {train_base}/<class>/<files> ({looked})"
            )
        if classes is not None:
            classes = [str(c) for c in classes]
            missing = [c for c in classes if c not in found]
            if missing:
                raise UserError(f"classes {missing} have no folder in {train_base}; found {found}")
        class_names = list(classes) if classes is not None else found
        files = []
        for split, base in bases.items():
            for d in _visible_dirs(base):
                if d.name not in class_names:
                    if split not in (None, "train") and classes is None:
                        raise UserError(
                            f"{d} is a class folder that {train_base} does not have; add it there or remove it"
                        )
                    continue
                found_files = _files_in(d, exts)
                if not found_files:
                    raise UserError(
                        f"class folder {d} holds no readable files ({looked}); add files or remove the folder"
                    )
                files += [(p.relative_to(root).as_posix(), d.name) for p in found_files]
        return files, class_names, layout

    def _split(self, files, val_fraction, test_fraction, seed, split_file, subject_regex):
        if split_file is not None:
            split_file = Path(os.path.expanduser(str(split_file)))
            if _inside(split_file, self.root):
                raise UserError(
                    f"split_file {split_file} lies inside the data root {self.root}; keep it next to the run instead"
                )
            if split_file.exists():
                mapping = load_split(split_file)
                for s in SPLITS:
                    for rel in mapping[s]:
                        if rel not in self._class_of:
                            raise UserError(
                                f"split file {split_file} lists {rel}, which is not a readable file of the selected "
                                f"classes under {self.root}; restore the file, or delete {split_file} to draw a new split"
                            )
                log.info("reusing split %s", split_file)
                return mapping
        rels = [r for r, _ in files]
        labels = [self.class_names.index(c) for _, c in files]
        groups = None
        if subject_regex:
            pat = re.compile(subject_regex)
            groups = []
            for r in rels:
                m = pat.search(r)
                if m is None:
                    raise UserError(
                        f"subject_regex {subject_regex!r} does not match {self.root / r}; fix the pattern or set it to null"
                    )
                groups.append(m.group(1) if pat.groups else m.group(0))
        if self.layout == "split_folders":
            fixed = {s: [r for r in rels if r.split("/", 1)[0] == s] for s in SPLITS}
            tr = [i for i, r in enumerate(rels) if r.split("/", 1)[0] == "train"]
            vf = val_fraction if not fixed["val"] else 0.0
            tf = test_fraction if not fixed["test"] else 0.0
            sub = stratified_split(
                [labels[i] for i in tr],
                vf,
                tf,
                seed,
                None if groups is None else [groups[i] for i in tr],
            )
            # folders fix a split where they exist; a missing val/test is drawn from train
            mapping = {s: fixed[s] + [rels[tr[j]] for j in sub[s]] for s in ("val", "test")}
            mapping["train"] = [rels[tr[j]] for j in sub["train"]]
        else:
            idx = stratified_split(labels, val_fraction, test_fraction, seed, groups)
            mapping = {s: [rels[i] for i in idx[s]] for s in SPLITS}
        if split_file is not None:
            save_split(
                split_file,
                mapping,
                {"root": str(self.root), "class_names": self.class_names, "seed": seed},
            )
            log.info("wrote split %s", split_file)
        return mapping

    # -- loading ------------------------------------------------------------

    def _load_all(self, mapping, cache_dir):
        cache = None
        if cache_dir is not None:
            cache_dir = Path(os.path.expanduser(str(cache_dir)))
            if _inside(cache_dir, self.root):
                raise UserError(
                    f"cache_dir {cache_dir} lies inside the data root {self.root}; put the cache elsewhere"
                )
            cache = cache_dir / f"image_folder-{stable_hash(self._fp)}.npz"
            if cache.exists():
                with np.load(cache, allow_pickle=False) as z:
                    return self._wrap(
                        {s: (z[f"{s}_x"], z[f"{s}_y"], list(z[f"{s}_files"])) for s in SPLITS}
                    )
        skipped, shapes, out, kinds, masked = [], {}, {}, {}, []
        rels = [r for sp in SPLITS for r in mapping[sp]]
        results = {}
        # Decoding (PIL, zlib, h5py) releases the GIL: a few threads read a
        # folder of thousands of JPEG figures several times faster.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, (rel, res) in enumerate(zip(rels, pool.map(self._read_one, rels), strict=True)):
                results[rel] = res
                if (i + 1) % max(1, len(rels) // 10) == 0:
                    log.info("read %d/%d spectrograms from %s", i + 1, len(rels), self.root)
        for s in SPLITS:
            xs, ys, kept = [], [], []
            for rel in mapping[s]:
                res = results[rel]
                if isinstance(res, UserError):
                    if self.strict:
                        raise res
                    skipped.append(f"{rel} ({res})")
                    continue
                x, info = res
                kind = info.get("colormap", "grey/array")
                kinds[kind] = kinds.get(kind, 0) + 1
                if info.get("masked_fraction", 0.0) > 0.2:
                    masked.append(f"{rel} ({info['masked_fraction']:.0%})")
                shapes.setdefault(x.shape, rel)
                if len(shapes) > 1:
                    (s0, f0), (s1, f1) = list(shapes.items())[:2]
                    raise UserError(
                        f"images differ in size: {self.root / f0} is {s0[0]}x{s0[1]}, {self.root / f1} is "
                        f"{s1[0]}x{s1[1]}; set data.image_size (e.g. 64) to resize them all"
                    )
                xs.append(x)
                ys.append(self.class_names.index(self._class_of[rel]))
                kept.append(rel)
            h, w = next(iter(shapes)) if shapes else (self.read_kwargs["image_size"] or 0,) * 2
            out[s] = (
                np.stack(xs) if xs else np.zeros((0, h, w), np.float32),
                np.asarray(ys, np.int64),
                kept,
            )
        log.info("read %s: %s", self.root, ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        if masked:
            warnings.warn(
                f"{len(masked)} colour images have > 20% of the plot off the colour map and filled "
                f"from neighbours (check max_residual / colormaps): {'; '.join(masked[:5])}",
                stacklevel=2,
            )
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} unreadable files (strict=false): " + "; ".join(skipped),
                stacklevel=2,
            )
        if not out["train"][2]:
            raise UserError(f"no readable training files under {self.root}")
        if cache is not None:
            import io

            buf = io.BytesIO()
            arrays = {}
            for s in SPLITS:
                x, y, kept = out[s]
                arrays.update({f"{s}_x": x, f"{s}_y": y, f"{s}_files": np.asarray(kept, dtype=str)})
            np.savez(buf, **arrays)
            atomic_write_bytes(cache, buf.getvalue())
        return self._wrap(out)

    def _read_one(self, rel: str):
        try:
            return read_spectrogram(self.root / rel, **self.read_kwargs)
        except UserError as err:
            return err

    def _wrap(self, arrays):
        data = {}
        for s, (x, y, files) in arrays.items():
            # [0, 1] -> [-1, 1], (N, H, W) -> (N, 1, H, W)
            x = torch.from_numpy(np.asarray(x, np.float32)).unsqueeze(1) * 2.0 - 1.0
            data[s] = SpectrogramTensors(
                x, torch.from_numpy(np.asarray(y, np.int64)), [str(f) for f in files]
            )
        h, w = data["train"].x.shape[-2:]
        if h != w:
            raise UserError(
                f"spectrograms under {self.root} are {h}x{w}, not square; set data.image_size (e.g. 64)"
            )
        self.image_size = int(h)
        return data

    # -- SpectrogramSource protocol -----------------------------------------

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; expected one of {SPLITS}")
        return self._data[name]

    def fingerprint(self) -> dict:
        return dict(self._fp)

    def save_split(self, path) -> Path:
        """Write the split in use (relative paths) to `path`, e.g. next to a run."""
        if _inside(Path(path), self.root):
            raise UserError(
                f"{path} lies inside the data root {self.root}; write the split next to the run"
            )
        return save_split(
            path, self.split_mapping, {"root": str(self.root), "class_names": self.class_names}
        )
