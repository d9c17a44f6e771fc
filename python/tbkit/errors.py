"""Errors a user sees. Each one renders as a single paragraph: what happened, why, and the fix.

Notebook and CLI front ends print ``str(err)`` and no traceback unless asked
(``TBKIT_DEBUG=1`` or ``--debug``): the message must stand on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the gate imports this module: typing only, no import cycle
    from tbkit.guard.gate.plan import Plan

# A message is read, not scrolled: each part is bounded, and a value quoted in it (a 5 MB config
# string, an overlong path) is cut in the middle with the omitted length named.
MAX_CAUSE_CHARS = 1400
MAX_FIX_CHARS = 500
# Longest text a mask is applied to whole: beyond it, head and tail are kept (each cut back to a
# whitespace so no fragment of a cut URL survives) — every step on untrusted input stays bounded.
MAX_MASKED_CHARS = 1_000_000
# scheme://userinfo@host: the userinfo runs to the LAST '@' before the path (a password may hold '@').
# Each pattern is linear: one character class per run, and the authority is bounded by '/', '?', '#'
# or whitespace, none of which the userinfo part may contain.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,30}://)(?P<authority>[^/?#\s]*)")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:access_token|token|api_key|apikey|key|sig|signature|password|passwd|secret)=)[^&#\s]*",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """``https://user:secret@host/…`` → ``https://***@host/…`` and ``?token=…`` → ``?token=***``: a
    URL's credentials are never echoed. Linear in the input, which is shortened first when huge."""
    text = str(text)
    if len(text) > MAX_MASKED_CHARS:
        half = MAX_MASKED_CHARS // 2
        head_words = text[:half].rsplit(None, 1)  # a token cut at the edge could be half a URL: dropped
        tail_words = text[-half:].split(None, 1)
        head = head_words[0] if len(head_words) == 2 else ""
        tail = tail_words[1] if len(tail_words) == 2 else ""
        text = f"{head} …[{len(text) - len(head) - len(tail)} characters omitted]… {tail}"

    def authority(m: re.Match[str]) -> str:
        host: str = m["authority"]
        scheme: str = m["scheme"]
        at = host.rfind("@")
        return scheme + (f"***@{host[at + 1 :]}" if at >= 0 else host)

    text = _AUTHORITY.sub(authority, text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


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

    def _render_traceback_(self) -> list[str]:
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

    def __init__(
        self, cause: str, fix: str = "", *, plan: Optional[Plan] = None, distributions: Iterable[str] = ()
    ) -> None:
        self.plan = plan
        self.distributions = tuple(distributions)
        super().__init__(cause, fix)


class InstallFailed(TbkitError):
    """pip ran (or was asked to) and did not produce a working installation."""


class UsageError(TbkitError):
    """Bad arguments to a public function or command."""


class OutputError(TbkitError):
    """The environment refused a write of the report (disk full, permission, a file in the way)."""
