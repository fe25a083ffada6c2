"""The one user-facing error type.

Library code raises :class:`SkullVAEError` for every problem a user can fix (bad file,
bad argument, missing data). The CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

from os import PathLike


class SkullVAEError(Exception):
    """A problem with the user's input, phrased for the user.

    Args:
        message: what is wrong, in one sentence.
        path: the file or folder concerned, named in the message when given.
    """

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
