"""Reading local source files safely: regular files only (a named pipe or a device would block or
never end), refused before they are opened, and read with a size bound.

No torch here: these checks run before anything heavy is imported, so a wrong path is answered
at once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tbkit.errors import SourceError

MAX_SOURCE_BYTES = 5 * 1024 * 1024  # model code; an export is a few kilobytes
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # config.json; a large HF config (label maps) is well under 1 MB

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def what_is(path: Path) -> str:
    """'a regular file', 'a folder', 'a named pipe (FIFO)', … or 'missing' (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return "missing"
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def exists(path: Path) -> bool:
    return what_is(path) != "missing"


def require_regular(path: Path, role: str) -> None:
    """SourceError unless ``path`` is a regular file; checked with stat, before any open."""
    kind = what_is(path)
    if kind == "a regular file":
        return
    if kind == "missing":
        raise SourceError(f"{role} {path} does not exist", "Check the path.")
    raise SourceError(
        f"{role} {path} is {kind}, not a regular file; tbkit reads source files only from regular files "
        "(reading a pipe or a device could block forever)",
        "Save the content to an ordinary file and pass that.",
    )


def read_bounded(path: Path, role: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; SourceError otherwise."""
    require_regular(path, role)
    try:
        # O_NONBLOCK: should the path be swapped for a pipe after the stat, open still returns.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise SourceError(
            f"cannot read {role} {path}: {err.strerror or err}", "Check the file exists and is readable."
        ) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"{role} {path} is not a regular file", "Pass an ordinary file.")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SourceError(
            f"{role} {path} is larger than the limit of {limit} bytes ({limit // (1024 * 1024)} MiB)",
            "Check this is the right file; model code and its config are kilobytes, not megabytes.",
        )
    return data


def read_folder(folder: Path) -> dict[str, bytes]:
    """{'model.py': bytes[, 'config.json': bytes]} of a model folder (config.json optional)."""
    model = folder / "model.py"
    files = {"model.py": read_bounded(model, "model file", MAX_SOURCE_BYTES)}
    cfg = folder / "config.json"
    if exists(cfg):
        files["config.json"] = read_bounded(cfg, "config file", MAX_CONFIG_BYTES)
    return files
