"""Requirement strings in, validated requirements out — before anything reaches pip.

pip always runs with an argument list (never a shell), so nothing here is about quoting. It is
about *meaning*: a string that starts with ``-`` is a pip option, not a package; a URL or a path
installs code from somewhere the user may not have meant; a newline, a tab or an invisible
character hides a second argument in what looks like one. Each is refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tbkit.errors import InstallRefused

# What a plain requirement may contain: a name, extras, version specifiers (PEP 440/508), spaces.
# No markers (`;`), no quotes, no `@`, no `/`: those are checked separately for a precise message.
_PLAIN = re.compile(r"^[A-Za-z0-9._\-\[\],<>=!~*+ ]+$")
_URL_SCHEMES = ("https://", "http://", "file://", "git+https://")
_SHELL_CHARS = set("`$|&;<>(){}'\"\\#*?!")
_NEVER_IN_NAMES = set("`$|&;(){}'\"\\#?")  # shell syntax that no requirement or plain path needs
# pip's own list (pip/_internal/utils/filetypes.py ARCHIVE_EXTENSIONS): a requirement ending in one of these,
# in any case, is read by pip as a file path whether or not the file exists, so it is a path here too.
ARCHIVE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar.bz2",
    ".tbz",
    ".tar.gz",
    ".tgz",
    ".tar",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
)


def looks_like_path(text: str) -> bool:
    """Would pip read this requirement as a local path (pip's ``_looks_like_path`` or an archive name)?"""
    return "/" in text or text.startswith((".", "~")) or text.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Req:
    """One validated requirement. ``text`` is what pip receives; ``kind`` is name|url|path."""

    text: str
    kind: str
    name: Optional[str] = None  # canonical name; None for a bare URL or path (pip's plan names it)
    requirement: Any = None  # packaging.requirements.Requirement for kind == "name"

    def __str__(self) -> str:
        return self.text


def packaging_modules() -> tuple[Any, Any, Any, Any]:
    """`packaging` (everywhere pip is), falling back to the copy pip vendors."""
    try:
        from packaging import requirements, specifiers, utils, version
    except ImportError:  # pragma: no cover - packaging ships with every Colab/Jupyter image
        from pip._vendor.packaging import requirements, specifiers, utils, version  # type: ignore
    return requirements, specifiers, utils, version


def canonical(name: str) -> str:
    return str(packaging_modules()[2].canonicalize_name(name))


def _refuse(text: str, why: str, fix: str) -> InstallRefused:
    return InstallRefused(f"tbkit refused the requirement {text!r}: {why}", fix)


def validate(text: object, *, allow_urls: bool = False, allow_paths: bool = False) -> Req:
    """Check one requirement string; return a ``Req`` or raise ``InstallRefused`` saying why."""
    if not isinstance(text, str):
        raise _refuse(
            repr(text),
            f"it is a {type(text).__name__}, not a string",
            'Pass requirement strings such as "captum>=0.9".',
        )
    _check_characters(text)
    if text.startswith(_URL_SCHEMES) or re.match(r"^[A-Za-z0-9._\-\[\], ]+@", text) or "://" in text:
        return _validate_url(text, allow_urls)
    _check_shell_text(text)
    if looks_like_path(text):
        return _validate_path(text, allow_paths)
    return _validate_name(text)


def _check_characters(text: str) -> None:
    """Empty, invisible, non-ASCII, padded or option-like text: refused before anything reads it."""
    if not text.strip():
        raise _refuse(text, "it is empty", 'Pass a package name such as "six" or "captum>=0.9".')
    if any(not c.isascii() or not c.isprintable() for c in text):
        bad = next(c for c in text if not c.isascii() or not c.isprintable())
        raise _refuse(
            text,
            f"it contains the character {bad!r} (control, whitespace other than a space, "
            "or non-ASCII), which can hide a second argument or a look-alike package name",
            "Type the requirement with plain ASCII letters, digits and version operators.",
        )
    if text != text.strip():
        raise _refuse(text, "it has leading or trailing spaces", "Remove the surrounding spaces.")
    if text.startswith("-"):
        raise _refuse(
            text,
            "it is a pip option, not a package; options cannot be passed as requirements",
            "Pass only package requirements; index settings go in the keyword arguments "
            "index_url=, find_links=, no_index=.",
        )


def _check_shell_text(text: str) -> None:
    if ";" in text:
        raise _refuse(
            text,
            "`;` starts an environment marker (or a second shell command), and neither is accepted here",
            "Evaluate the condition in Python and call ensure() only when it holds.",
        )
    if any(c in _NEVER_IN_NAMES for c in text):
        bad = sorted({c for c in text if c in _NEVER_IN_NAMES})
        raise _refuse(
            text,
            f"it contains {' '.join(bad)}, which is shell syntax and has no place in a package "
            "requirement (no shell ever runs it; it is refused rather than passed on)",
            "Write the requirement as NAME, NAME[extra] or NAME>=VERSION.",
        )


def _validate_name(text: str) -> Req:
    if not _PLAIN.match(text):
        bad = sorted({c for c in text if not _PLAIN.match(c)})
        raise _refuse(
            text,
            f"it contains {' '.join(bad)}, which has no place in a package requirement "
            "(shell text is never run, and is refused rather than passed on)",
            "Write the requirement as NAME, NAME[extra] or NAME>=VERSION.",
        )
    requirements = packaging_modules()[0]
    try:
        req = requirements.Requirement(text)
    except requirements.InvalidRequirement as err:
        raise _refuse(
            text,
            f"it is not a valid requirement ({' '.join(str(err).split())})",
            "Write it as NAME, NAME[extra] or NAME>=VERSION (PEP 508).",
        ) from None
    return Req(text=text, kind="name", name=canonical(req.name), requirement=req)


def _validate_url(text: str, allow: bool) -> Req:
    if not allow:
        raise _refuse(
            text,
            "it installs from a URL, which is allowed only when asked for explicitly",
            "If you trust this URL, pass allow_urls=True (CLI: --allow-urls).",
        )
    if " " in text.replace(" @ ", "@", 1):
        raise _refuse(text, "a URL requirement cannot contain spaces", "Percent-encode the spaces in the URL.")
    url = text.split("@", 1)[1].strip() if not text.startswith(_URL_SCHEMES) else text
    if not url.startswith(_URL_SCHEMES):
        raise _refuse(
            text,
            f"only {', '.join(s[:-3] for s in _URL_SCHEMES)} URLs are accepted",
            "Use an https:// (or file://) URL.",
        )
    name = None
    if not text.startswith(_URL_SCHEMES):
        requirements = packaging_modules()[0]
        try:
            name = canonical(requirements.Requirement(text).name)
        except requirements.InvalidRequirement as err:
            raise _refuse(
                text, f"it is not a valid `name @ url` requirement ({err})", "Write it as NAME @ https://…"
            ) from None
    return Req(text=text, kind="url", name=name)


def _validate_path(text: str, allow: bool) -> Req:
    if not allow:
        raise _refuse(
            text,
            "it installs from a local path, which is allowed only when asked for explicitly",
            "If you mean this file or folder, pass allow_paths=True (CLI: --allow-paths).",
        )
    if any(c in _SHELL_CHARS for c in text) or text.startswith("~"):
        raise _refuse(
            text,
            "a path with shell characters or `~` is not expanded and is refused",
            "Pass the absolute path to the wheel, archive or project folder.",
        )
    path = Path(text)
    if path.is_dir():
        if not (path / "pyproject.toml").is_file() and not (path / "setup.py").is_file():
            raise _refuse(
                text,
                "the folder has no pyproject.toml or setup.py, so it is not a Python project",
                "Point at the project folder, a .whl file or an sdist archive.",
            )
    elif not path.is_file():
        raise _refuse(
            text,
            "no such file or folder",
            f"Check the path; relative paths are taken from the current directory ({Path.cwd()}).",
        )
    elif not text.lower().endswith(ARCHIVE_SUFFIXES):
        raise _refuse(
            text,
            "the file is not a wheel (.whl) or a source archive pip reads (.tar.gz, .zip, .tgz, .tar.xz, …)",
            "Point at a .whl file, an sdist archive or a project folder.",
        )
    return Req(text=str(path.resolve()), kind="path")


def validate_all(requirements: Sequence[object], *, allow_urls: bool = False, allow_paths: bool = False) -> list[Req]:
    if not requirements:
        raise InstallRefused(
            "tbkit was asked to install nothing: no requirement was given",
            'Pass one or more requirements, e.g. ensure("captum>=0.9").',
        )
    return [validate(r, allow_urls=allow_urls, allow_paths=allow_paths) for r in requirements]


def check_option_value(option: str, value: str) -> str:
    """An index/find-links value goes to pip as its own argument; refuse ones pip would read as options."""
    value = str(value)
    if not value or value.startswith("-") or any(not c.isascii() or not c.isprintable() for c in value):
        raise InstallRefused(
            f"tbkit refused the {option} value {value!r}: it is empty, starts with '-' or "
            "contains control or non-ASCII characters",
            f"Pass a plain URL or path as {option}.",
        )
    return value
