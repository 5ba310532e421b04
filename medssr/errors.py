"""Errors by origin: what the user gave is wrong (a path, an option, a record, a config value), as opposed to a
bug. Raised where the code knows the input is the user's; the CLI prints it as one line (exit 2), while any
other exception is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(ValueError):
    """Input the user gave cannot be used; the message names the setting, path or reference and what is wrong.

    A ValueError, so callers that catch a bad value (and tests that expect one) keep working."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """A ValueError raised in this block (a config's ``__post_init__`` rejecting a value the user gave) is a user error."""
    try:
        yield
    except UserError:
        raise
    except ValueError as error:
        raise UserError(str(error)) from error
