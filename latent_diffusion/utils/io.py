"""Atomic writes and stable hashes.

Everything the package writes (exports, caches, sample folders, stats) goes to
a temporary name beside its target and is renamed into place, so a killed
process never leaves a half-written file that a later run takes for a whole one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


# Errors that mean "the disk (or quota, or file-size limit) is full": a user can fix them
# by freeing space or writing elsewhere, so they become a UserError naming the path.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC / EDQUOT / EFBIG, also when a library (safetensors' Rust writer,
    PIL) reports it as a non-OSError carrying the OS message."""
    if isinstance(err, OSError) and err.errno in _FULL:
        return True
    text = str(err)
    return any(
        s in text
        for s in ("No space left", "os error 28", "Disk quota", "File too large", "os error 27")
    )


def disk_full_error(path, err: BaseException):
    from latent_diffusion.utils.errors import UserError

    return UserError(
        f"no space left writing {path} ({str(err).splitlines()[0][:120]}); nothing was replaced "
        f"(the previous file or folder, if any, is intact). Free disk space or point the output "
        f"(paths.output_dir / export_dir / out_dir / paths.cache_dir) at another disk, then rerun"
    )


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[Any]:
    """A binary file object on a temporary name beside `path`; on success it is flushed,
    fsynced and renamed over `path` (os.replace is atomic within one file system). On any
    error, or if the process dies, `path` keeps its old content; the temporary file
    (.<name>.<random>.tmp) is removed, or left behind by a killed process to be ignored."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder + rename."""
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files a killed writer left in `folder` (never read as data: see atomic_writer)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` in one rename.

    With overwrite=False an existing `path` is an error (nothing the user owns
    is replaced). With overwrite=True the old folder is moved aside first and
    removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        from latent_diffusion.utils.errors import UserError

        raise UserError(f"{path} already exists; choose another output folder or remove it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(out: str | os.PathLike, writer: str, command: str) -> None:
    """Refuse to replace a non-empty folder that `command` did not write: its metadata.json
    must name `writer`. What a user keeps in a folder is never deleted by a rerun."""
    from latent_diffusion.utils.errors import UserError

    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"out_dir={out} is a file; choose a folder path")
    if not any(out.iterdir()):
        return
    try:
        found = json.loads((out / "metadata.json").read_text()).get("writer")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != writer:
        raise UserError(
            f"out_dir={out} exists, is not empty and was not written by {command}; "
            "choose another out_dir or remove that folder first"
        )


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object that does not depend on dict order or the process."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    """sha256 of a file's bytes (for VAE weights, checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]
