"""Running pip: always ``sys.executable -m pip`` with an argument list, never a shell.

Index settings come from keyword arguments first, then from TBKIT_PIP_INDEX_URL,
TBKIT_PIP_FIND_LINKS (``os.pathsep``-separated) and TBKIT_PIP_NO_INDEX=1, so a test or a mirror
can point tbkit at a local wheelhouse without touching pip's own configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from tbkit.guard.gate.installed import installed_version
from tbkit.guard.gate.requirements import check_option_value

_TRUE = {"1", "true", "yes", "on"}
# CSI/OSC sequences and lone escapes: ipykernel sets FORCE_COLOR=1, and pip's rich output keeps colour even
# with --no-color in a few places (older pips); no escape may reach a message.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]?")
_EXTRA_ENV: dict[str, str] = {}  # a `NAME=value pip install …` prefix, for the pip runs of one request


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@contextlib.contextmanager
def extra_env(env: Mapping[str, str]) -> Iterator[None]:
    """Give pip the environment prefix the user typed (``PIP_NO_CACHE_DIR=1 pip install …``)."""
    saved = dict(_EXTRA_ENV)
    _EXTRA_ENV.update(env)
    try:
        yield
    finally:
        _EXTRA_ENV.clear()
        _EXTRA_ENV.update(saved)


@dataclass(frozen=True)
class IndexOptions:
    """Where pip looks for packages. Same options for the plan and for the install."""

    index_url: Optional[str] = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    pre: bool = False

    @classmethod
    def resolve(
        cls,
        index_url: Optional[str] = None,
        find_links: Union[None, str, os.PathLike[str], list[str]] = None,
        no_index: bool = False,
        extra_index_url: Union[None, str, list[str]] = None,
        pre: bool = False,
    ) -> IndexOptions:
        env = os.environ
        if index_url is None and env.get("TBKIT_PIP_INDEX_URL"):
            index_url = env["TBKIT_PIP_INDEX_URL"]
        if find_links is None and env.get("TBKIT_PIP_FIND_LINKS"):
            find_links = [p for p in env["TBKIT_PIP_FIND_LINKS"].split(os.pathsep) if p]
        if not no_index and env.get("TBKIT_PIP_NO_INDEX", "").strip().lower() in _TRUE:
            no_index = True
        if isinstance(find_links, (str, os.PathLike)):
            find_links = [os.fspath(find_links)]
        if isinstance(extra_index_url, (str, os.PathLike)):
            extra_index_url = [extra_index_url]
        return cls(
            index_url=check_option_value("index_url", index_url) if index_url is not None else None,
            extra_index_urls=tuple(check_option_value("extra_index_url", u) for u in (extra_index_url or ())),
            find_links=tuple(check_option_value("find_links", str(p)) for p in (find_links or ())),
            no_index=bool(no_index),
            pre=bool(pre),
        )

    def args(self) -> list[str]:
        """pip's command line; an index URL that carries credentials is not on it (``ps`` shows
        every argv to every user) but in ``env()``."""
        out: list[str] = []
        if self.no_index:
            out.append("--no-index")
        if self.index_url and not has_credentials(self.index_url):
            out += ["--index-url", self.index_url]
        if not any(has_credentials(u) for u in self.extra_index_urls):
            for url in self.extra_index_urls:
                out += ["--extra-index-url", url]
        for link in self.find_links:
            out += ["--find-links", link]
        if self.pre:
            out.append("--pre")
        return out

    def env(self) -> dict[str, str]:
        """The index URLs ``args()`` leaves out, for pip's environment (readable only by this user)."""
        out: dict[str, str] = {}
        if self.index_url and has_credentials(self.index_url):
            out["PIP_INDEX_URL"] = self.index_url
        if any(has_credentials(u) for u in self.extra_index_urls):
            out["PIP_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)  # pip splits it on whitespace
        return out

    def describe(self) -> str:
        """For plans and messages: credentials in URLs (``https://user:token@host``) are never shown."""
        parts = []
        if self.no_index:
            parts.append("no index")
        if self.index_url:
            parts.append(f"index {redact(self.index_url)}")
        parts += [f"extra index {redact(u)}" for u in self.extra_index_urls]
        parts += [f"find-links {redact(p)}" for p in self.find_links]
        return ", ".join(parts) or "pip's configured index"


def redact(url: str) -> str:
    from tbkit.errors import mask_credentials

    return mask_credentials(url)


def has_credentials(url: str) -> bool:
    """``scheme://user:password@host…`` (or a token in the query) carries a secret."""
    from tbkit.errors import mask_credentials

    return mask_credentials(url) != url


def base_argv() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-color"]


def pip_env(index: Optional[IndexOptions] = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(_EXTRA_ENV)
    if index is not None:
        env.update(index.env())
    for name in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS"):  # set by ipykernel and CI runners
        env.pop(name, None)
    env["NO_COLOR"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


@dataclass
class PipRun:
    argv: list[str]
    returncode: int
    output: str = ""
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_captured(argv: list[str], timeout: float = 900, index: Optional[IndexOptions] = None) -> PipRun:
    """Run pip quietly, keeping its output for the error report."""
    proc = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=pip_env(index),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    output = strip_ansi(proc.stdout)
    return PipRun(argv, proc.returncode, output, output.splitlines()[-40:])


def run_streamed(
    argv: list[str], echo: Optional[Callable[[str], None]], index: Optional[IndexOptions] = None
) -> PipRun:
    """Run pip, passing each output line to ``echo`` as it arrives (progress in the notebook)."""
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=pip_env(index),
        stdin=subprocess.DEVNULL,
        bufsize=1,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = strip_ansi(line.rstrip("\n"))
            tail.append(line)
            if echo is not None:
                echo(line)
        proc.wait()
    except BaseException:  # Ctrl-C: let pip finish its own cleanup rather than leaving a half install
        proc.wait()
        raise
    return PipRun(argv, proc.returncode, "\n".join(tail), list(tail))


def pip_version() -> Optional[tuple[int, ...]]:
    """pip's version in this interpreter, read from its dist-info (pip is never imported here)."""
    v = installed_version("pip")
    if v is None:
        return None
    parts = []
    for piece in v.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
