"""Output folders, checked before any work: a run must not train for half an hour and
then find that its out_dir is a file, cannot be written, or holds someone else's files."""

from __future__ import annotations

import os
from pathlib import Path

from latent_diffusion.utils.errors import UserError

# what Hydra itself puts into a run folder before the entry point starts
HYDRA_OWN = (".hydra",)


def check_out_dir(path, key: str, ours: tuple[str, ...] = (), task: str | None = None) -> Path:
    """`path` can become (or is) a folder this process may write into.

    ours: files only this entry point writes; a non-empty folder with none of them (Hydra's
    own `.hydra` and `<task>.log` aside) belongs to someone else and is refused.
    """
    if path in (None, ""):
        return None
    out = Path(str(path)).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(
            f"{key}={out} is a file, not a folder; choose a folder path or move the file away"
        )
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(
            f"{key}={out}: {existing} is a file, so the folder cannot be created; "
            "choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{key}={out}: {existing} is not writable by this user; choose a folder you can "
            "write to (or fix its permissions)"
        )
    if ours and out.is_dir():
        hydra_own = {*HYDRA_OWN, f"{task}.log"} if task else set(HYDRA_OWN)
        entries = [p.name for p in out.iterdir() if p.name not in hydra_own]
        if entries and not any((out / name).exists() for name in ours):
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(
                f"{key}={out} is not empty ({shown}) and was not written by this command "
                f"(no {' / '.join(ours)}); it is not overwritten: choose another {key} or "
                "remove that folder first"
            )
    return out
