"""Command lines Hydra cannot compose, said the way a UserError is: one line, exit code 2.

Kept apart from `errors.py` because it imports Hydra, which the diffusion core (a user of
`UserError`) must not.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError


def report_config_errors(hydra_main):
    """Outermost decorator of every entry point (above `hydra.main`): a command line Hydra
    cannot compose (a mistyped key, an unknown group option, an override it cannot parse)
    becomes one `error:` line naming the nearest valid key or option, exit code 2, like a
    UserError, instead of Hydra's multi-line report with exit code 1.

    Hydra re-raises composition errors only when HYDRA_FULL_ERROR is set, so it is set here
    for this process; a user who set it themselves gets Hydra's full traceback as documented.
    """

    @functools.wraps(hydra_main)
    def wrapper(*args, **kwargs):
        user_wants_traces = os.environ.get("HYDRA_FULL_ERROR") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return hydra_main(*args, **kwargs)
        except (ConfigCompositionException, OverrideParseException) as err:
            if user_wants_traces:
                raise
            print(f"error: {config_error_message(err, sys.argv[1:])}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def config_error_message(err: Exception, argv: list[str]) -> str:
    """One line for a Hydra composition error: what on the command line is wrong and the fix."""
    if isinstance(err, OverrideParseException):
        return (
            f"cannot read the override {err.override!r}: {_one_line(err.message)} "
            "(quote values with spaces or commas; lists are key=[a,b])"
        )
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(option, err.options, n=1, cutoff=0.5)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return (
            f"{group}={option}: no such option for {group!r}; {hint}"
            f"the options are: {', '.join(sorted(err.options))}"
        )
    text = _one_line(str(err))
    if text.startswith("Ambiguous value for argument"):
        arg = text.split("'")[1] if text.count("'") >= 2 else text
        return (
            f"{arg}: a comma on the command line is a sweep; add -m (--multirun) to sweep over "
            "the values, write key=[a,b] for a list, or quote it for a string"
        )
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and full_key and parent is not None:
        prefix, _, key = str(full_key).rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        keys = sorted(str(k) for k in parent.keys())
        given = next((a.split("=", 1)[1] for a in argv if a.startswith(f"{full_key}=")), None)
        value = f"={given}" if given is not None else ""
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        if close:
            hint = f"did you mean {prefix}{close[0]}{value}?"
        else:
            shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
            hint = f"the keys under {prefix.rstrip('.') or 'the top level'} are: {shown}"
        return (
            f"{full_key}{value}: there is no key {full_key!r}; {hint} "
            f"(--cfg job prints every key; +{full_key}{value} adds a new one)"
        )
    return text


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
