"""Errors a user sees. Each one renders as a single paragraph: what happened, why, and the fix.

Notebook and CLI front ends print ``str(err)`` and no traceback unless asked
(``TBKIT_DEBUG=1`` or ``--debug``): the message must stand on its own.
"""

from __future__ import annotations


class TbkitError(Exception):
    """Base class. ``cause`` says what went wrong, ``fix`` what the user can do about it."""

    def __init__(self, cause: str, fix: str = "") -> None:
        self.cause = cause.strip()
        self.fix = fix.strip()
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        text = self.cause
        if self.fix:
            text = f"{text.rstrip('.')}. {self.fix}"
        return " ".join(text.split())  # one paragraph, no stray newlines

    def _render_traceback_(self) -> list:
        """IPython/Jupyter show this instead of a traceback (the paragraph alone; TBKIT_DEBUG=1 keeps it)."""
        import os
        import traceback

        if os.environ.get("TBKIT_DEBUG") == "1":
            return "".join(traceback.format_exception(type(self), self, self.__traceback__)).splitlines()
        return [f"{type(self).__name__}: {self}"]


class SourceError(TbkitError):
    """A model source could not be fetched, trusted or built."""


class InstallRefused(TbkitError):
    """The install gate refused: installing would (or might) break this running process."""

    def __init__(self, cause: str, fix: str = "", *, plan=None, distributions=()) -> None:
        self.plan = plan
        self.distributions = tuple(distributions)
        super().__init__(cause, fix)


class InstallFailed(TbkitError):
    """pip ran (or was asked to) and did not produce a working installation."""


class UsageError(TbkitError):
    """Bad arguments to a public function or command."""
