"""User-facing errors.

Every problem a user can fix (a bad spec, a missing path, a checkpoint that does not fit)
is raised as :class:`VitdepthError` with a one-line message that names the thing and the
fix. The CLI prints the message and exits non-zero; the library lets it propagate.
"""

from __future__ import annotations


class VitdepthError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2
