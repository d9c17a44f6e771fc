"""Where a report is written, and how it replaces the previous one.

A run never writes into ``--out`` directly: it writes into a fresh sibling staging folder
``.<out name>.tbkit-<pid>-<random>`` and swaps it in when it is done (or interrupted, marked so).
Until then the previous complete report stays readable and whole; a run that dies leaves at most a
hidden staging folder, never a mix of two runs' files. The out folder is resolved to an absolute
path once, before any model code runs, so a model that calls ``os.chdir`` changes nothing.

Files are written with the modes the user's umask gives (like any file they write), through
``os.replace`` (never following a symlink planted at the target).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from tbkit.errors import OutputError, UsageError

REPORT_ENTRIES = ("report.json", "report.html", "plots")
_STAGING_MARK = ".tbkit-"


def resolve_out(out: str | os.PathLike[str] | None) -> Path:
    """The out folder as an absolute path (``''`` is a usage error, not the current folder)."""
    text = os.fspath(out) if out is not None else ""
    if not str(text).strip():
        raise UsageError("the output folder is empty ('')", "Give a folder for the report, e.g. --out tbkit-report.")
    return Path(os.path.realpath(os.path.expanduser(text)))  # a link given as --out is the user's choice


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, in every thread)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: reports are readable like the user's other files


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise output_error(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise output_error(err, path) from None
        raise


def output_error(err: OSError, path: str | os.PathLike[str]) -> OutputError:
    """One paragraph for a write that the environment refused (disk full, permission, not a folder)."""
    import errno

    fixes = {
        errno.ENOSPC: "The disk is full: free some space or give another --out.",
        errno.EDQUOT: "The disk quota is used up: free some space or give another --out.",
        errno.EACCES: "Give a folder you can write to (--out), or fix its permissions.",
        errno.EPERM: "Give a folder you can write to (--out), or fix its permissions.",
        errno.EROFS: "The file system is read-only: give another --out.",
        errno.ENOTDIR: "A part of the path is a file, not a folder: remove it or give another --out.",
        errno.EEXIST: "A file is in the way: remove it or give another --out.",
    }
    why = err.strerror or str(err)
    return OutputError(
        f"writing the report failed at {path}: {why}", fixes.get(err.errno or 0, "Give another --out folder.")
    )


def make_staging(out: Path) -> Path:
    """A fresh, empty sibling of ``out`` (its parents are created) that only this run writes into."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}{_STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()  # fails if it exists: never reuse another run's folder
        (staging / "plots").mkdir()
    except OSError as err:
        raise output_error(err, out) from None
    return staging


def discard(staging: Optional[Path]) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _is_report_folder(out: Path) -> bool:
    """An out folder that holds nothing but a report can be swapped whole; one with other files of
    the user's (``--out .``) gets the report entries replaced one by one."""
    try:
        return all(name in REPORT_ENTRIES for name in os.listdir(out))
    except FileNotFoundError:
        return True


def swap_in(staging: Path, out: Path) -> None:
    """Put the staged report at ``out``: the whole folder in one step where the system allows
    (``renameat2(RENAME_EXCHANGE)``), else entry by entry, report.json last."""
    try:
        if not os.path.lexists(out):
            try:
                os.rename(staging, out)
                return
            except OSError as err:  # another run put it there meanwhile: replace as below
                if not os.path.isdir(out):
                    raise output_error(err, out) from None
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"the output folder {out} is not a folder (any more)", "Give a folder for --out.")
        if _is_report_folder(out) and not _holds_cwd(out) and _exchange(staging, out):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous report
            return
        _swap_entries(staging, out)
    except OSError as err:
        raise output_error(err, out) from None


def _swap_entries(staging: Path, out: Path) -> None:
    new_plots, old_plots = staging / "plots", out / "plots"
    if os.path.lexists(old_plots) and (old_plots.is_symlink() or not old_plots.is_dir()):
        os.unlink(old_plots)  # a link is replaced, never followed
    if not os.path.lexists(old_plots) or not _exchange(new_plots, old_plots):
        aside = staging / ".previous-plots"
        if os.path.lexists(old_plots):
            os.rename(old_plots, aside)
        os.rename(new_plots, old_plots)
    for name in ("report.html", "report.json"):  # the JSON last: its presence means the rest is there
        src = staging / name
        if src.exists():
            os.replace(src, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _holds_cwd(out: Path) -> bool:
    """Swapping the folder a shell stands in would leave it in a deleted folder: replace entries then."""
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:
        return False
    return cwd == out or out in cwd.parents


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return bool(fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0)


def leftover_stagings(out: Path) -> list[Path]:
    """Staging folders of runs that died (for tests and cleanup)."""
    try:
        return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}{_STAGING_MARK}")]
    except OSError:
        return []
