"""Running model code: a file as a fresh module, or a ``package.module`` by import; each after the
import guard has read its syntax tree, under the import time limit, with the source's folder
(and ``--path`` folders) on ``sys.path`` for that load only.

A file is executed as a fresh ``types.ModuleType`` — never in the caller's (notebook's) globals —
named ``tbkit_user_model_<hash>`` and registered in ``sys.modules``, because classes defined in
it must be importable by name for ``pickle`` / ``torch.save(model)`` / dataclasses.

Modules imported from a source folder (``from layers import Block``) stay registered for the same
reason; before the next load from a folder, earlier ones of the same names that came from
another folder are dropped, so a second model never silently gets the first one's ``layers``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import linecache
import os
import sys
import sysconfig
import traceback
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

from tbkit.errors import SourceError, shorten
from tbkit.sources import advice, exports, import_guard, import_scan, time_limit
from tbkit.sources import files as sfiles

_INSTALLED = ("site-packages", "dist-packages")

# The folders put on sys.path for a load (the source's own, --path ones)
Folders = Sequence[Union[str, os.PathLike[str]]]


def decode_source(raw: bytes, label: str) -> str:
    """UTF-8 text of model code (a leading BOM is dropped); SourceError for other bytes or NULs."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(
            f"{label} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})",
            "Re-save the file as UTF-8 (Python source must be UTF-8).",
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise SourceError(
            f"{label} contains a NUL byte (line {line}, offset {nul}), so it is not Python source text "
            "(a binary file, or a file damaged while saving)",
            "Open the file in an editor, remove the NUL bytes (or save it again as UTF-8 text), and retry.",
        )
    return text


def exec_model_code(
    raw: bytes,
    filename: str,
    label: str,
    *,
    folders: Folders = (),
    guard: bool = True,
    timeout: Optional[float] = None,
    config_file: Optional[Path] = None,
) -> types.ModuleType:
    """Run model code in a fresh module; SourceError for bad text, a guard refusal, a syntax
    error, a missing import, a time-out, or anything the code raises while being defined.
    ``config_file`` (--config) is only named in advice (a relative import's module form)."""
    text = decode_source(raw, label)
    if guard:
        import_guard.check(text, label)
    name = f"tbkit_user_model_{hashlib.sha256(raw).hexdigest()[:16]}"
    # Let tracebacks and inspect.getsource show the code even when it lives only in memory.
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    try:
        code = compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError as err:
        raise SourceError(
            f"{label} has a syntax error at line {err.lineno}: {err.msg}",
            f"Fix that line{exports.again(exports.recognise(text))}; tbkit runs the file unchanged.",
        ) from None
    refuse_missing_imports(text, label, filename, folders)
    module = types.ModuleType(name, f"model code loaded by tbkit from {label}")
    module.__file__ = filename
    sys.modules[name] = module
    try:
        with _running(label, filename, folders, timeout, config_file):
            exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_module(
    dotted: str, label: str, *, folders: Folders, guard: bool, timeout: Optional[float]
) -> types.ModuleType:
    """Import ``package.module`` from ``folders`` (guard on its own file first)."""
    with on_sys_path(folders):
        _drop_foreign(folders)
        found = origin(dotted, folders)
        if guard and found is not None:
            raw = sfiles.read_bounded(found, "module file", sfiles.MAX_SOURCE_BYTES)
            import_guard.check(decode_source(raw, label), label)
        if found is not None:
            refuse_missing_imports(found.read_text("utf-8", "replace"), label, str(found), folders)
        with _running(label, str(found or dotted), folders, timeout):
            return importlib.import_module(dotted)


def refuse_missing_imports(text: str, label: str, filename: str, folders: Folders) -> None:
    """Before anything runs: every import the code needs that cannot be found, named at once."""
    with on_sys_path(folders):
        missing = import_scan.missing(text)
    if missing:
        raise advice.missing_modules_error(missing, label, filename, folders)


def origin(dotted: str, folders: Folders) -> Optional[Path]:
    """The file of ``dotted`` found under ``folders`` without importing anything."""
    parts = dotted.split(".")
    for folder in folders:
        base = Path(folder).joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@contextlib.contextmanager
def _running(
    label: str, filename: str, folders: Folders, timeout: Optional[float], config_file: Optional[Path] = None
) -> Iterator[None]:
    """The common frame: sys.path, the time limit, and errors turned into one paragraph."""
    try:
        with on_sys_path(folders), time_limit.limit(timeout, label):
            _drop_foreign(folders)
            yield
    except SourceError:
        raise
    except ModuleNotFoundError as err:
        also = _also_missing(err, folders)
        raise advice.missing_import_error(err, label, filename, folders, config_file, also) from None
    except ImportError as err:
        if "no known parent package" in str(err):
            raise advice.missing_import_error(err, label, filename, folders, config_file) from None
        raise _raised(err, label, filename) from None
    except (Exception, SystemExit) as err:
        raise _raised(err, label, filename) from None


def _also_missing(err: ModuleNotFoundError, folders: Folders) -> list[import_scan.Missing]:
    """The other missing imports of the user file whose import raised ``err`` (a module the model
    file imports, e.g. ``from .layers import …``), so that all of them are named at once."""
    frames = [f.filename for f in traceback.extract_tb(err.__traceback__)]
    ours = (str(Path(__file__).resolve().parents[1]), sysconfig.get_paths()["stdlib"])
    user = [f for f in frames if Path(f).is_file() and not any(s in f for s in _INSTALLED) and not f.startswith(ours)]
    if not user:
        return []
    try:  # a hint only: it must never replace the error it adds to
        text = linecache.getlines(user[-1]) or Path(user[-1]).read_text("utf-8", "replace").splitlines(True)
        with on_sys_path(folders):
            return import_scan.missing("".join(text))
    except Exception:
        return []


def _raised(err: BaseException, label: str, filename: str) -> SourceError:
    return SourceError(
        f"running {label} raised {type(err).__name__}: {one_line(err)}{where(err, filename)}",
        advice.for_exception(err) or "Fix the model code at that line; it must only define the model when run.",
    )


@contextlib.contextmanager
def on_sys_path(folders: Iterable[Union[str, os.PathLike[str]]]) -> Iterator[None]:
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _drop_foreign(folders: Folders) -> None:
    """Forget modules named like something in ``folders`` that were loaded from another user
    folder (not from an installed package), so this load imports its own files."""
    names: set[str] = set()
    for folder in map(Path, folders):
        with contextlib.suppress(OSError):
            names |= {p.stem if p.suffix == ".py" else p.name for p in folder.iterdir()}
    names -= set(sys.stdlib_module_names)
    roots = [str(Path(f).resolve()) for f in folders]
    for key in [k for k in sys.modules if k.split(".")[0] in names]:
        file = getattr(sys.modules[key], "__file__", None) or ""
        if file and not any(s in file for s in _INSTALLED) and not any(file.startswith(r) for r in roots):
            del sys.modules[key]


def one_line(err: BaseException, limit: int = 300) -> str:
    return shorten(" ".join(str(err).split()), limit) or "(no message)"


def where(err: BaseException, filename: str) -> str:
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    return f" (line {lines[-1]})" if lines else ""
