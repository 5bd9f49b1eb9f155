"""User-facing errors.

Every problem a user can fix (a bad spec, a missing path, a checkpoint that does not fit)
is raised as :class:`VitdepthError` with a one-line message that names the thing and the
fix. The CLI prints the message and exits non-zero; the library lets it propagate.
"""

from __future__ import annotations


class VitdepthError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (by the CLI's handler) so cleanup runs as for Ctrl-C."""


class Interrupted(VitdepthError):
    """Work stopped by SIGINT / SIGTERM after saving a checkpoint; the message says how to resume.

    Exit codes follow the shell's convention for the signal: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
