"""Whether every split will hold something, judged from the config and a listing of
data.root (no file is read): an empty validation split would otherwise stop the run at
its first validation, and a class too small to reach every split silently leaves that
class out of validation or test metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation.numbers import ABSENT, select

log = logging.getLogger(__name__)


def _counts(root: Path, classes, exts) -> dict[str, int] | None:
    """Files per class folder under root (the root/<class>/ layout), None for another layout."""
    from latent_diffusion.data.readers import ALL_EXTS

    if not root.is_dir() or any((root / s).is_dir() for s in ("train", "val", "test")):
        return None
    exts = tuple(e.lower() for e in (exts or ALL_EXTS))
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        dirs = [d for d in dirs if d.name in {str(c) for c in classes}]
    return {d.name: sum(1 for f in d.rglob("*") if f.suffix.lower() in exts) for d in dirs}


def check_splits(cfg, prefix: str = "data") -> None:
    source = select(cfg, f"{prefix}.source")
    if source == "microdoppler":
        val = select(cfg, f"{prefix}.val_per_class", None)
        if val is not None and val == 0:
            raise UserError(
                f"{prefix}.val_per_class=0 leaves the validation split empty (validation and "
                f"checkpoint selection need it); set {prefix}.val_per_class>=1 or null"
            )
        return
    if source != "image_folder":
        return
    root = select(cfg, f"{prefix}.root", None)
    if root in (None, ABSENT) or str(root) == "???":
        return
    val_f, test_f = (
        select(cfg, f"{prefix}.val_fraction", 0.1),
        select(cfg, f"{prefix}.test_fraction", 0.1),
    )
    if select(cfg, f"{prefix}.split_file", None):
        return  # the split file decides
    counts = _counts(
        Path(str(root)),
        select(cfg, f"{prefix}.classes", None),
        select(cfg, f"{prefix}.extensions", None),
    )
    if counts is None:
        return
    if val_f == 0:
        raise UserError(
            f"{prefix}.val_fraction=0 and {root} has no val/ folder: the validation split would be "
            f"empty; set {prefix}.val_fraction (e.g. 0.1) or add {root}/val/<class>/ files"
        )
    from latent_diffusion.data.splits import stratified_split

    short = []
    for name, n in counts.items():
        sizes = (
            {k: len(v) for k, v in stratified_split([0] * n, val_f, test_f).items()} if n else {}
        )
        missing = [
            s for s in ("train", "val", "test") if not sizes.get(s) and (s != "test" or test_f > 0)
        ]
        if missing:
            short.append(f"{name} ({n} files: none in {'/'.join(missing)})")
    if short and len(short) == len(counts) and "val" in " ".join(short):
        raise UserError(
            f"the validation split would be empty: every class of {root} is too small for "
            f"{prefix}.val_fraction={val_f}: {'; '.join(short)}. Add files, raise "
            f"{prefix}.val_fraction, or give a val/ folder"
        )
    if short:
        log.warning(
            "classes too small to appear in every split (they are missing from its metrics): %s. "
            "Add files to them, or raise %s.val_fraction / %s.test_fraction",
            "; ".join(short),
            prefix,
            prefix,
        )
