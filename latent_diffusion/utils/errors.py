"""User-facing errors.

A `UserError` is something the user caused and can fix (a bad path, an empty
folder, a corrupt file, a config value out of range). Its message names the
thing and the fix; entry points print it without a traceback and exit with 2.
"""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """An error with a message written for the user: what is wrong and how to fix it."""


def report_user_errors(main):
    """Decorator for entry points: a UserError becomes one clear line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
