"""The right advice for an import that fails (found from the syntax tree before the code runs, or
raised while it runs): every missing package named at once with its pip name; a module that
exists beside the file or in a folder above it is an import-path problem (``--path``), not a
package to install from PyPI; a relative import in a file is answered with the module form."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tbkit.errors import SourceError
from tbkit.sources import config_files

if TYPE_CHECKING:
    from tbkit.sources.execute import Folders
    from tbkit.sources.import_scan import Missing

_CONFIG_ANY = "give its config with --config FILE (config= in tbkit.load)"
_PARENT_LEVELS = 6  # how far up from the model file a package folder is looked for


def missing_import_error(
    err: ImportError,
    label: str,
    filename: str,
    folders: Folders,
    config_file: Optional[Path] = None,
    also: Iterable[Missing] = (),
) -> SourceError:
    """For an ImportError raised while the code ran; ``also``: more missing imports (import_scan.Missing)
    found in the file that raised it, named in the same paragraph."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        from tbkit.sources.import_scan import Missing

        first = Missing(err.name, err.name, None)
        return missing_modules_error([first, *(m for m in also if m.name != err.name)], label, filename, folders)
    start = _start_folder(filename)
    package = _package_root(start) if start is not None else None
    module = _dotted(Path(filename), package) if package is not None else "package.module"
    parent = str(package.parent) if package is not None else "DIR"
    config = f" --config {config_file}" if config_file is not None else ""
    where = config_files.where_it_goes(Path(filename), config_file) if start is not None else _CONFIG_ANY
    return SourceError(
        f"{label} uses a relative import (from . import …), which works only when it is imported as part of "
        "its package, not run as a file",
        f"Load it as a module: tbkit run {module}:ClassName --path {parent}{config} "
        f"(tbkit.load('{module}:ClassName', path=…{', config=…' if config else ''})); {where}.",
    )


def missing_modules_error(missing: Sequence[Missing], label: str, filename: str, folders: Folders) -> SourceError:
    """One paragraph for all missing imports (import_scan.Missing): a path problem when one of them
    exists beside the file or above it, else the packages to install, with their pip names."""
    start = _start_folder(filename)
    for m in missing:
        top = m.name.split(".")[0]
        found = _find_upwards(top, start) if start is not None else None
        if found is not None:
            error = _path_problem(label, m.name, top, found, filename, folders)
            others = [o for o in missing if o is not m]
            if not others:
                return error
            return SourceError(
                f"{error.cause}; it also imports {_listed(others)}, which are not installed",
                f"{error.fix} Install the others with tbkit.install({_pips(others)}).",
            )
    gate = "through the gate (it refuses installs that would break this session)"
    pips = _pips(missing)
    if len(missing) == 1:
        m, top = missing[0], missing[0].name.split(".")[0]
        return SourceError(
            f"{label} imports {_listed(missing)}, which is not installed in this Python (and no {top}.py or {top}/ "
            "was found beside the model file or in the folders above it)",
            f"Install it {gate} with tbkit.install({pips}), or remove the import from the model code."
            if pips
            else f"Check which version of {top} provides it, or remove the import from the model code.",
        )
    install = f"Install them {gate} with tbkit.install({pips})" if pips else "Check the versions of their packages"
    return SourceError(
        f"{label} imports {len(missing)} modules that are not installed in this Python: {_listed(missing)} "
        "(none of them is a .py file or folder beside the model file or in the folders above it)",
        f"{install}, or remove those imports from the model code.",
    )


def _listed(missing: Sequence[Missing]) -> str:
    def one(m: Missing) -> str:
        extra = [f"line {m.line}"] if m.line else []
        if "." in m.name:
            extra.append(f"not in the installed {m.name.rsplit('.', 1)[0]}")
        elif m.pip != m.name:
            extra.append(f"pip package {m.pip}")
        return repr(m.name) + (f" ({', '.join(extra)})" if extra else "")

    return ", ".join(one(m) for m in missing)


def _pips(missing: Sequence[Missing]) -> str:
    """The install arguments: pip names of the missing top-level packages (a missing submodule of an
    installed package is not fixed by installing it again)."""
    return ", ".join(repr(p) for p in dict.fromkeys(m.pip for m in missing if "." not in m.name))


# Errors whose cause is not the model code's shape: (markers in the message, advice).
_SPECIFIC = (
    (
        ("process group", "init_process_group", "model parallel", "model_parallel", "torch.distributed", "MASTER_ADDR"),
        "The model's layers need torch.distributed initialised (model-parallel layers, e.g. fairscale's or "
        "Megatron's, need a process group): give tbkit a build_model() function that calls "
        "torch.distributed.init_process_group('gloo', init_method='tcp://127.0.0.1:29500', rank=0, world_size=1) "
        "and the library's model-parallel initialisation (world size 1) before it builds the model, or use the "
        "model's single-device version.",
    ),
    (
        ("not compiled with CUDA", "no CUDA GPUs", "NVIDIA driver", "CUDA is not available"),
        "The code needs a CUDA GPU while the model is built: build it on the CPU (leave .cuda() / device='cuda' "
        "out of __init__; tbkit moves the model itself), or run on a machine with a GPU.",
    ),
)


def for_exception(err: BaseException) -> Optional[str]:
    """Advice that fits what the error says, or None when only the generic advice fits."""
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    return next((fix for markers, fix in _SPECIFIC if any(m.lower() in lowered for m in markers)), None)


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


def _path_problem(label: str, missing: str, top: str, found: Path, filename: str, folders: Folders) -> SourceError:
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
