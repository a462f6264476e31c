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
        except Exception as err:
            user = find_user_error(err)
            if user is None:
                raise
            print(f"error: {user}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def find_user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, if any: Hydra's instantiate wraps exceptions raised
    in constructors (InstantiationException), and Lightning re-raises some from hooks."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
