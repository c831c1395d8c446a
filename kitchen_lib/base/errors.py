"""The one line between a user's mistake and a bug in kitchen_lib.

A `UserError` is something the user can fix (a bad value, a missing or damaged file, a folder
that cannot be written, a busy folder): the CLI prints it in one line and exits 2. Anything else
that escapes is a bug: the CLI shows its traceback and asks for a report. It is a ValueError so
that code (and tests) catching the ValueError a bad value always raised keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message says which flag or file, and what to do."""


class DestinationError(UserError):
    """A folder something must be written to cannot be: read-only, a file, or under a file."""

    @classmethod
    def of(cls, e: OSError, folder: object, what: str) -> DestinationError:
        """The OSError met while writing in `folder` (given by `what`: a flag, or what it is for)."""
        return cls(f"{what} {folder}: cannot write there ({e.strerror or e}): choose a folder you can write, "
                   f"or fix its permissions")
