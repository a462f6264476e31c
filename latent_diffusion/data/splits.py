"""Train/val/test splits: stratified by class, subject-disjoint when subjects are known.

Micro-Doppler signatures are personal (height, gait, arm swing): a subject
seen in training and again in test inflates every score, so when file names
carry a subject id, whole subjects go to one split. The
split is written to JSON with file paths relative to the data root so a rerun,
another machine or a reviewer uses exactly the same files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latent_diffusion.data.source import SPLITS
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_write_json


def _count(n: int, fraction: float) -> int:
    # round half up (not banker's rounding), and at least one item for a
    # non-zero fraction once there are enough items to keep one for training
    k = math.floor(n * fraction + 0.5)
    if fraction > 0 and k == 0 and n >= 3:
        k = 1
    return k


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1 (the rest is the training split)"
        )


def stratified_split(
    labels: Sequence[int],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, list[int]]:
    """Indices per split {'train', 'val', 'test'} (each sorted).

    Without groups: every class is shuffled (seeded) and cut into test / val /
    train by the fractions, so class proportions hold in every split.
    With groups (subject ids): subjects are shuffled and assigned whole, test
    first then val, each until it holds its fraction of the items; no subject
    appears in two splits. Class balance then follows the subjects (approximate).
    """
    _check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    if groups is None:
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_test, n_val = _count(len(idx), test_fraction), _count(len(idx), val_fraction)
            while n_test + n_val >= len(idx) and n_test + n_val > 0:  # keep >= 1 for training
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
            out["test"] += idx[:n_test].tolist()
            out["val"] += idx[n_test : n_test + n_val].tolist()
            out["train"] += idx[n_test + n_val :].tolist()
        return {s: sorted(v) for s, v in out.items()}

    groups = np.asarray([str(g) for g in groups])
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    subjects = sorted(set(groups.tolist()))
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    sizes = {s: int((groups == s).sum()) for s in subjects}
    n = len(labels)
    assign: dict[str, str] = {}
    pos = 0
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction <= 0:
            continue
        target, have = n * fraction, 0
        # keep at least one subject for training
        while pos < len(order) - 1 and (have == 0 or have + sizes[order[pos]] / 2 <= target):
            assign[order[pos]] = split
            have += sizes[order[pos]]
            pos += 1
    for s in order[pos:]:
        assign[s] = "train"
    for i, g in enumerate(groups):
        out[assign[g]].append(i)
    return {s: sorted(v) for s, v in out.items()}


def save_split(
    path: str | os.PathLike, mapping: dict[str, list[str]], meta: dict | None = None
) -> Path:
    """Write {split: [relative file paths]} (+ optional metadata) as JSON, atomically."""
    bad = set(mapping) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split names {sorted(bad)}; expected {SPLITS}")
    obj = {"splits": {s: list(map(str, mapping.get(s, []))) for s in SPLITS}}
    if meta:
        obj["meta"] = meta
    return atomic_write_json(path, obj)


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split file written by save_split -> {split: [relative file paths]}."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
        splits = obj["splits"]
        mapping = {s: [str(p) for p in splits.get(s, [])] for s in SPLITS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"cannot read split file {path} ({err}); delete it to draw a new split "
            "or point split_file at a file written by an earlier run"
        ) from None
    seen: dict[str, str] = {}
    for s, files in mapping.items():
        for f in files:
            if f in seen:
                raise UserError(f"split file {path} lists {f} in both '{seen[f]}' and '{s}'")
            seen[f] = s
    return mapping


def fraction_subset(
    labels: Sequence[int], fraction: float, seed: int, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, stratified `fraction` of a training split.

    The one rule for "the F-subset with seed S": `train data.fraction=F
    data.fraction_seed=S` trains on it and the evaluation protocol's classifier
    for (F, S) is trained on it, so a generator and the classifier it augments
    see exactly the same real images. Each class keeps round-half-up(F * n_c)
    of its n_c items, drawn by a generator seeded by (S, class index), so one
    class's draw does not depend on the others' sizes. A fraction that leaves
    a class empty is an error naming the class, not a silent minimum of one.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise UserError(
            f"data.fraction={fraction} must be in (0, 1]: the share of the training split to keep"
        )
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels))
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = math.floor(len(idx) * fraction + 0.5)
        if k == 0:
            name = class_names[int(c)] if class_names is not None else f"class {int(c)}"
            raise UserError(
                f"data.fraction={fraction} keeps no training sample of '{name}', which has "
                f"{len(idx)}: "
                f"use data.fraction >= {0.5 / len(idx):.3g} (every class needs at least one)"
            )
        rng = np.random.default_rng([int(seed), int(c)])
        out.append(rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(out))


def subset_fingerprint(item_ids: Sequence[str]) -> str:
    """sha256 (16 hex) of the sorted item ids (relative file paths or simulator sample ids)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, item_ids))).encode()).hexdigest()[:16]
