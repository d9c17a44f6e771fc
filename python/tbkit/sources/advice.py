"""The right advice for an import that fails while model code runs: a module that exists beside
the file or in a folder above it is an import-path problem (``--path``), not a package to
install from PyPI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tbkit.errors import SourceError
from tbkit.sources import config_files

_CONFIG_ANY = "give its config with --config FILE (config= in tbkit.load)"
_PARENT_LEVELS = 6  # how far up from the model file a package folder is looked for


def missing_import_error(err: ImportError, label: str, filename: str, folders, config_file=None) -> SourceError:
    start = _start_folder(filename)
    if isinstance(err, ModuleNotFoundError) and err.name:
        missing = err.name
        top = missing.split(".")[0]
        found = _find_upwards(top, start) if start is not None else None
        if found is not None:
            return _path_problem(label, missing, top, found, filename, folders)
        return SourceError(
            f"{label} imports {missing!r}, which is not installed in this Python (and no {top}.py or {top}/ "
            "was found beside the model file or in the folders above it)",
            f"Install it through the gate with tbkit.install({top!r}) (it refuses installs that would break this "
            "session), or remove the import from the model code.",
        )
    package = _package_root(start) if start is not None else None
    module = _dotted(Path(filename), package) if package is not None else "package.module"
    parent = str(package.parent) if package is not None else "DIR"
    config = f" --config {config_file}" if config_file is not None else ""
    where = config_files.where_it_goes(Path(filename), config_file) if start is not None else _CONFIG_ANY
    return SourceError(
        f"{label} uses a relative import (from . import …), which works only when it is imported as part of "
        "its package, not run as a file",
        f"Load it as a module: tbkit run {module}:ClassName --path {parent}{config} "
        f"(tbkit.load('{module}:ClassName', path={parent!r}{', config=...' if config else ''})); {where}.",
    )


def _start_folder(filename: str) -> Optional[Path]:
    path = Path(filename)
    if filename.startswith("<") or not path.parent.is_dir():
        return None
    return path.parent.resolve()


def _find_upwards(top: str, start: Path) -> Optional[Path]:
    """The nearest folder, from ``start`` upwards, that holds ``top.py`` or a ``top/`` folder."""
    folder = start
    for _ in range(_PARENT_LEVELS + 1):
        if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
            return folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _path_problem(label: str, missing: str, top: str, found: Path, filename: str, folders) -> SourceError:
    what = f"{top}.py" if (found / f"{top}.py").is_file() else f"the folder {top}/"
    on_path = any(Path(f).resolve() == found for f in folders)
    cause = (
        f"{label} imports {missing!r}, and {what} exists in {found}: this is an import-path problem, "
        "not a package to install"
    )
    if on_path:
        return SourceError(
            cause + f" ({found} is on the import path, yet {missing} could not be imported from it)",
            f"Check that {missing} exists there as a module (a missing __init__.py or a misspelt name).",
        )
    fix = f"Add --path {found} (path={str(found)!r} in tbkit.load) so that {top} can be imported"
    module = _dotted(Path(filename), found / top) if (found / top).is_dir() else None
    if module:
        fix += f", or load the model as a module: tbkit run {module}:ClassName --path {found}"
    return SourceError(cause, fix + ".")


def _package_root(start: Path) -> Optional[Path]:
    """The outermost folder above ``start`` (inclusive) that still has an __init__.py."""
    root = None
    folder = start
    while (folder / "__init__.py").is_file():
        root = folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return root


def _dotted(file: Path, package: Path) -> Optional[str]:
    try:
        rel = file.resolve().relative_to(package.parent)
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if all(p.isidentifier() for p in parts) else None
