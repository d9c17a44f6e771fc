"""Errors a user sees. Each one renders as a single paragraph: what happened, why, and the fix.

Notebook and CLI front ends print ``str(err)`` and no traceback unless asked
(``TBKIT_DEBUG=1`` or ``--debug``): the message must stand on its own.
"""

from __future__ import annotations

import re

# A message is read, not scrolled: each part is bounded, and a value quoted in it (a 5 MB config
# string, an overlong path) is cut in the middle with the omitted length named.
MAX_CAUSE_CHARS = 1400
MAX_FIX_CHARS = 500
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def mask_credentials(text: str) -> str:
    """``https://user:secret@host/…`` → ``https://***@host/…``: a URL's credentials are never echoed."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))


def shorten(text: str, limit: int = 200) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and end with the cut length named."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = text[: keep * 2 // 3], text[-(keep // 3) :]
    return f"{head}…[{len(text) - len(head) - len(tail)} characters omitted]…{tail}"


class TbkitError(Exception):
    """Base class. ``cause`` says what went wrong, ``fix`` what the user can do about it."""

    def __init__(self, cause: str, fix: str = "") -> None:
        self.cause = shorten(mask_credentials(cause).strip(), MAX_CAUSE_CHARS)
        self.fix = shorten(mask_credentials(fix).strip(), MAX_FIX_CHARS)
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
