"""Reading a generated set: a `sample` / `simulate` folder or a samples.npz.

Folder: D/<class>/*.png (8-bit grey, row 0 = +v_max); other files in D
(grid.png, metadata.json, samples.npz) are ignored. npz: arr_0 uint8 (N, H, W, 1)
or (N, H, W), arr_1 (N,) labels indexing the class names stored in the npz
("class_names") or in the metadata.json beside it. Pixels become the package
convention, float32 (N, 1, H, W) in [-1, 1] (x / 127.5 - 1).

Labels are mapped onto the real data's class order by name. Images of another
size than the real data are an error unless resize=True, which resizes them
(antialiased bilinear) with a warning: a resized set no longer shows the
generator's own resolution, so this is opt-in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latent_diffusion.data.readers import check_labels, grey_stack
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.pixels import from_uint8

log = logging.getLogger(__name__)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _read_folder(root: Path):
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    imgs, labels, names = [], [], []
    for c in classes:
        files = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            continue
        names.append(c)
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
            except OSError as err:
                raise UserError(
                    f"generated image {f} cannot be read ({err}); remove it or re-sample"
                ) from None
            imgs.append(arr)
            labels.append(len(names) - 1)
    return imgs, np.asarray(labels, np.int64), names


def _read_npz(path: Path):
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"generated={path} is not a readable .npz ({err})") from None
    if "arr_0" not in z or "arr_1" not in z:
        raise UserError(
            f"generated={path} needs arr_0 (uint8 images N,H,W[,1]) and arr_1 (labels), has "
            f"{list(z)}"
        )
    x = z["arr_0"]
    names = [str(c) for c in z["class_names"]] if "class_names" in z else None
    if names is None and (path.parent / "metadata.json").is_file():
        names = json.loads((path.parent / "metadata.json").read_text()).get("class_names")
    if names is None:
        raise UserError(
            f"generated={path}: no class names (npz key 'class_names' or metadata.json "
            f"'class_names' beside it); pass the sample folder instead"
        )
    x = grey_stack(x, f"generated={path}")
    y = check_labels(z["arr_1"], len(x), len(names), f"generated={path}")
    if x.dtype != np.uint8:
        raise UserError(f"generated={path}: arr_0 must be uint8 (0..255), got {x.dtype}")
    return list(x), y, list(names)


def load_generated(path, class_names: list[str], image_size: int, resize: bool = False):
    """-> (x (N, 1, S, S) float32 in [-1, 1], y (N,) int64 indices into `class_names`, per-class
    counts)."""
    p = Path(str(path)).expanduser()
    if str(path) in ("", "???", "None") or not p.exists():
        raise UserError(
            f"generated={path} does not exist; pass the folder written by `sample` "
            "(D/<class>/*.png) or its samples.npz"
        )
    if p.is_dir():
        imgs, y, names = _read_folder(p)
    else:
        imgs, y, names = _read_npz(p)
    if len(imgs) == 0:
        raise UserError(
            f"generated={p} holds no images: expected {p}/<class>/*.png (as written by "
            "`python -m latent_diffusion.sample`) or a samples.npz"
        )
    unknown = [c for c in names if c not in class_names]
    if unknown:
        raise UserError(
            f"generated={p}: classes {unknown} are not in the real data's classes {class_names}; "
            f"generated classes are {names}. Sample from a model trained on this data or "
            "choose the real classes with real.classes=[...]"
        )
    remap = np.array([class_names.index(c) for c in names])
    y = remap[y]
    sizes = sorted({im.shape for im in imgs})
    if sizes != [(image_size, image_size)]:
        if not resize:
            raise UserError(
                f"generated={p}: image size(s) {sizes} differ from the real data's "
                f"{image_size}x{image_size}; sample at real.image_size or pass resize=true "
                "to resize the generated images (antialiased)"
            )
        log.warning(
            "resizing generated images %s -> %dx%d (resize=true)", sizes, image_size, image_size
        )
        imgs = [
            np.asarray(
                Image.fromarray(im).resize(
                    (image_size, image_size), Image.BILINEAR, reducing_gap=None
                )
            )
            if im.shape != (image_size, image_size)
            else im
            for im in imgs
        ]
    x = from_uint8(np.stack(imgs)[..., None])  # (N, 1, S, S) float32 in [-1, 1]
    return x, torch.from_numpy(y), np.bincount(y, minlength=len(class_names))
