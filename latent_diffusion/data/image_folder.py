"""`ImageFolderSource` (data=image_folder): real spectrograms from class folders.

Layout `root/[train|val|test/]<class>/<files>`; files are read with readers.py
into the simulator's dB convention. Splits come from the folders or a seeded
stratified (optionally subject-disjoint) split saved as JSON next to the run.
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
from torch.utils.data import Dataset

from latent_diffusion.data.plot_area import crop_sizes_report
from latent_diffusion.data.raw_radar import RAW_EXTS, RawRadar, read_raw
from latent_diffusion.data.readers import (
    ALL_EXTS,
    dangling_links,
    db_normalise,
    read_spectrogram,
    report_dangling,
)
from latent_diffusion.data.source import SPLITS, register_source
from latent_diffusion.data.splits import load_split, save_split, stratified_split
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)


READER_VERSION = 2


def check_plot_boxes(boxes: dict, root: Path, strict: bool) -> dict | None:
    """One crop size per data set. Files whose plot area differs in size from the majority are
    named once; with strict=true an error where a resize would also distort them (another
    aspect ratio: another figure layout, or a crop that went wrong)."""
    major, differ, distort = crop_sizes_report(boxes)
    if major is None:
        return None
    log.info("cropped %d colour figures to their plot area: %dx%d px", len(boxes), *major)
    if not differ:
        return {"size": list(major), "differ": []}
    sizes = "; ".join(f"{r} {boxes[r][2]}x{boxes[r][3]}" for r in differ[:8])
    more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
    fix = (
        "check them (python -m latent_diffusion.inspect data=image_folder ...), or give the "
        "box as data.plot_box=[top, left, height, width]"
    )
    if distort and strict:
        raise UserError(
            f"{len(distort)} of {len(boxes)} figures under {root} have a plot area of another "
            f"shape than the majority's {major[0]}x{major[1]} px ({sizes}{more}); {fix}, or set "
            "data.strict=false to resize them anyway"
        )
    warnings.warn(
        f"{len(differ)} of {len(boxes)} figures under {root} have a plot area of another size "
        f"than the majority's {major[0]}x{major[1]} px ({sizes}{more}); they are resized like "
        f"the rest: {fix}",
        stacklevel=3,
    )
    return {"size": list(major), "differ": differ}


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
        plot_box: Sequence[int] | None = None,
        raw=None,
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
        # data.raw.enabled (data=raw_radar): files are raw recordings (raw_radar.py), each
        # giving one spectrogram per window of data.raw.duration_s
        self.raw = RawRadar.make(raw) if raw and raw.get("enabled") else None
        if self.raw is not None and not image_size:
            raise UserError(
                "data.image_size is null: raw recordings need it (the spectrogram's size, e.g. 64)"
            )
        self.radar = self.raw  # the axes (v_max, duration_s) for the summary and the metrics
        default_exts = RAW_EXTS if self.raw is not None else ALL_EXTS
        exts = tuple(
            e.lower() if e.startswith(".") else f".{e.lower()}"
            for e in (extensions or default_exts)
        )
        self.read_kwargs = dict(
            image_size=image_size, value_kind=value_kind, flip_doppler=bool(flip_doppler),
            transpose=bool(transpose), dynamic_range_db=float(dynamic_range_db), variable=variable,
            colormaps=tuple(colormaps), max_residual=float(max_residual),
            crop_to_plot=bool(crop_to_plot),
            plot_box=None if plot_box is None else [int(v) for v in plot_box],
        )  # fmt: skip
        if self.raw is not None:
            self.read_kwargs["raw"] = {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.raw).items()
            }
        db_normalise(np.ones((1, 1)), value_kind, dynamic_range_db)  # validate the options up front
        self.strict = bool(strict)
        files, self.class_names, self.layout = self._discover(exts, classes)
        self._class_of = {rel: c for rel, c in files}
        mapping = self._split(files, val_fraction, test_fraction, seed, split_file, subject_regex)
        self.split_mapping = mapping
        self._fp = {
            "source": "image_folder",
            # the reader's own version: figures are cropped by geometry since version 2
            "reader": READER_VERSION,
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
        # what reading found, for `inspect` / the data summary (not known from the cache)
        self.crop_report, self.read_info, self.skipped = None, {}, []
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
                f"no class folders in {train_base}{hint}; expected {train_base}/<class>/<files> "
                f"({looked})"
            )
        if classes is not None:
            classes = [str(c) for c in classes]
            missing = [c for c in classes if c not in found]
            if missing:
                raise UserError(f"classes {missing} have no folder in {train_base}; found {found}")
        class_names = list(classes) if classes is not None else found
        files, dangling = [], []
        for split, base in bases.items():
            for d in _visible_dirs(base):
                if d.name not in class_names:
                    if split not in (None, "train") and classes is None:
                        raise UserError(
                            f"{d} is a class folder that {train_base} does not have; add it there "
                            f"or remove it"
                        )
                    continue
                found_files = _files_in(d, exts)
                dangling += dangling_links(d, exts)
                if not found_files:
                    report_dangling(dangling, strict=True)  # the links are why it is empty
                    raise UserError(
                        f"class folder {d} holds no readable files ({looked}); add files or "
                        f"remove the folder"
                    )
                files += [(p.relative_to(root).as_posix(), d.name) for p in found_files]
        report_dangling(dangling, self.strict)
        return files, class_names, layout

    def _split(self, files, val_fraction, test_fraction, seed, split_file, subject_regex):
        if split_file is not None:
            split_file = Path(os.path.expanduser(str(split_file)))
            if _inside(split_file, self.root):
                raise UserError(
                    f"split_file {split_file} lies inside the data root {self.root}; keep it next "
                    f"to the run instead"
                )
            if split_file.exists():
                mapping = load_split(split_file)
                for s in SPLITS:
                    for rel in mapping[s]:
                        if rel not in self._class_of:
                            raise UserError(
                                f"split file {split_file} lists {rel}, which is not a readable "
                                f"file of the selected "
                                f"classes under {self.root}; restore the file, or delete "
                                f"{split_file} to draw a new split"
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
                        f"subject_regex {subject_regex!r} does not match {self.root / r}; fix the "
                        f"pattern or set it to null"
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
                    f"cache_dir {cache_dir} lies inside the data root {self.root}; put the cache "
                    f"elsewhere"
                )
            cache = cache_dir / f"image_folder-{stable_hash(self._fp)}.npz"
            if cache.exists():
                with np.load(cache, allow_pickle=False) as z:
                    return self._wrap(
                        {s: (z[f"{s}_x"], z[f"{s}_y"], list(z[f"{s}_files"])) for s in SPLITS}
                    )
        skipped, shapes, out, kinds, masked, boxes = [], {}, {}, {}, [], {}
        rels = [r for sp in SPLITS for r in mapping[sp]]
        results = {}
        # Decoding (PIL, zlib, h5py) releases the GIL: a few threads read a
        # folder of thousands of JPEG figures several times faster.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, (rel, res) in enumerate(zip(rels, pool.map(self._read_one, rels), strict=True)):
                results[rel] = res
                if (i + 1) % max(1, len(rels) // 10) == 0:
                    log.info("read %d/%d files from %s", i + 1, len(rels), self.root)
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
                kind = info.get("colormap", info.get("kind", "grey/array"))
                kinds[kind] = kinds.get(kind, 0) + 1
                if info.get("masked_fraction", 0.0) > 0.2:
                    masked.append(f"{rel} ({info['masked_fraction']:.0%})")
                if "plot_box" in info:
                    boxes[rel] = info["plot_box"]
                self.read_info[rel] = info
                # a raw recording gives (windows, H, W): one item per window, all in this
                # recording's split (windows of one recording never straddle two splits)
                windows = x if x.ndim == 3 else x[None]
                shapes.setdefault(windows.shape[1:], rel)
                if len(shapes) > 1:
                    (s0, f0), (s1, f1) = list(shapes.items())[:2]
                    raise UserError(
                        f"images differ in size: {self.root / f0} is {s0[0]}x{s0[1]}, "
                        f"{self.root / f1} is "
                        f"{s1[0]}x{s1[1]}; set data.image_size (e.g. 64) to resize them all"
                    )
                label = self.class_names.index(self._class_of[rel])
                for k, w in enumerate(windows):
                    xs.append(w)
                    ys.append(label)
                    kept.append(rel if x.ndim == 2 else f"{rel}#{k}")
            h, w = next(iter(shapes)) if shapes else (self.read_kwargs["image_size"] or 0,) * 2
            out[s] = (
                np.stack(xs) if xs else np.zeros((0, h, w), np.float32),
                np.asarray(ys, np.int64),
                kept,
            )
        log.info("read %s: %s", self.root, ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        self.crop_report = check_plot_boxes(boxes, self.root, self.strict)
        padded = [
            f"{r} ({i['padded_s']} s)" for r, i in self.read_info.items() if i.get("padded_s")
        ]
        if padded:
            warnings.warn(
                f"{len(padded)} recordings are shorter than data.raw.duration_s="
                f"{self.raw.duration_s} and were zero-padded at the end: {'; '.join(padded[:5])}",
                stacklevel=2,
            )
        if masked:
            warnings.warn(
                f"{len(masked)} colour images have > 20% of the plot off the colour map and filled "
                f"from neighbours (check max_residual / colormaps): {'; '.join(masked[:5])}",
                stacklevel=2,
            )
        self.skipped = skipped
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
            if self.raw is not None:
                k = self.read_kwargs
                return read_raw(
                    self.root / rel, self.raw, int(k["image_size"]), k["dynamic_range_db"],
                    k["variable"], k["flip_doppler"],
                )  # fmt: skip
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
                f"spectrograms under {self.root} are {h}x{w}, not square; set data.image_size "
                f"(e.g. 64)"
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
