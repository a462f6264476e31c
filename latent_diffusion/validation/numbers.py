"""Every numeric option in its range, checked by key before any work.

A rule is (key, kind); `kind` names the range. A key absent from the config is not
checked (the entry point does not have it), and `null` passes where the config's own
comment gives null a meaning (a default).
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

from latent_diffusion.utils.errors import UserError

RANGES = {
    "count": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "count0": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "positive": (lambda v: _number(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "nonneg": (lambda v: _number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "finite": (lambda v: _number(v) and math.isfinite(v), "a finite number"),
    "fraction": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "share": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "decay": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1) (e.g. 0.9999)"),
    "int": (lambda v: isinstance(v, int), "an integer"),
}


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


ABSENT = object()


def select(cfg, key: str, default=ABSENT):
    """cfg's value at a dotted key; `default` where the key (or a parent) does not exist."""
    try:
        return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve here (hydra:...) is not ours to judge
        return default


def check_ranges(cfg, rules: list[tuple[str, str]], nullable: tuple[str, ...] = ()) -> None:
    for key, kind in rules:
        value = select(cfg, key)
        if value is ABSENT or (value is None and key in nullable):
            continue
        ok, text = RANGES[kind]
        values = (
            list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
        )
        bad = [v for v in values if not ok(v)]
        if value is None or bad:
            extra = " (or null for the default)" if key in nullable else ""
            what = f"{value!r}" if not OmegaConf.is_list(value) else f"{list(value)}"
            raise UserError(
                f"{key}={what}: must be {text}{' each' if len(values) > 1 else ''}{extra}"
            )
