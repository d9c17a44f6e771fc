"""Which config file a load reads, the same way for every source form, and how messages name it.

Precedence (docs/sources.md, "Configs"): an explicit file (``--config FILE`` / ``config="FILE"``)
> ``config.json`` beside the model file (in a gist: the gist's own) > ``config.json`` in a package
folder above it (up to the top-level package of ``pkg.module:Class``) > ``config.json`` in a
``--path`` folder. The first one found is read whole; a ``config={...}`` dict then overrides keys.

The file read (and its sha256) is recorded in the provenance; when none is read, the folders
looked in are recorded instead, so that no message ever names a config file tbkit did not read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

from tbkit.errors import SourceError
from tbkit.sources import configs
from tbkit.sources import files as sfiles

if TYPE_CHECKING:
    from tbkit.sources.loaded import Provenance

NAME = "config.json"
_FIX = "--config FILE (config='FILE' or config={...} in tbkit.load)"


@dataclass
class ConfigRead:
    """The config a load uses: the values, the file they came from (or where tbkit looked)."""

    values: dict[str, Any]
    file: Optional[str] = None  # how messages name the file read: a path, or "config.json of gist <id>"
    sha256: Optional[str] = None
    size: Optional[int] = None
    looked: list[str] = field(default_factory=list)  # where config.json was looked for, when none was read


def explicit_path(config: object) -> Optional[Path]:
    """``config=`` as a path (str / PathLike): resolved and checked to be a regular file; else None."""
    if config is None or isinstance(config, dict):
        return None
    if not isinstance(config, (str, os.PathLike)):
        raise SourceError(
            f"config must be a path to a JSON file or a dict, not {type(config).__name__}",
            "Pass config='path/to/config.json' (--config FILE) or config={'key': value, ...}.",
        )
    path = Path(os.fspath(config)).expanduser()
    kind = sfiles.what_is(path)
    if kind != "a regular file":
        raise SourceError(
            f"the config file {path} given with --config (config=) is {'missing' if kind == 'missing' else kind}",
            "Give the path of an existing JSON file, e.g. --config ./config.json.",
        )
    return path.resolve()


def choose(
    explicit: Optional[Path],
    bundled: Optional[tuple[Optional[bytes], str, str]],
    folders: Sequence[Union[str, Path]],
    overrides: Optional[dict[str, Any]],
) -> ConfigRead:
    """The config by precedence. ``bundled``: (bytes or None, shown name, where) of the config.json
    that comes with the code (beside the file, in the gist); ``folders``: where to look next, in order."""
    raw: Optional[bytes] = None
    shown: Optional[str] = None
    looked: list[str] = []
    if explicit is not None:
        raw, shown = sfiles.read_bounded(explicit, "config file", sfiles.MAX_CONFIG_BYTES), str(explicit)
    elif bundled is not None and bundled[0] is not None:
        raw, shown = bundled[0], bundled[1]
    else:
        if bundled is not None:
            looked.append(bundled[2])
        for folder in _unique(folders):
            candidate = Path(folder) / NAME
            if sfiles.exists(candidate):
                raw, shown = sfiles.read_bounded(candidate, "config file", sfiles.MAX_CONFIG_BYTES), str(candidate)
                break
            looked.append(str(folder))
    values = configs.parse(raw, cast(str, shown)) if raw is not None else {}  # shown is set with raw above
    read = ConfigRead({**values, **(overrides or {})}, shown, looked=[] if raw is not None else looked)
    if raw is not None:
        read.sha256, read.size = hashlib.sha256(raw).hexdigest(), len(raw)
    return read


def package_folders(file: Path, top: Optional[Path] = None) -> list[Path]:
    """Folders from the file's own one upwards while they are packages (hold ``__init__.py``),
    stopping at ``top`` (the top-level package folder of ``pkg.module``) when given."""
    folder = file.parent
    out = [folder]
    while folder != top and (folder / "__init__.py").is_file() and (folder.parent / "__init__.py").is_file():
        folder = folder.parent
        out.append(folder)
    return out


def record(provenance: Provenance, read: ConfigRead) -> None:
    """Put the file read (name, sha256) or where tbkit looked into the provenance."""
    provenance.config_file, provenance.config_sha256 = read.file, read.sha256
    provenance.config_looked = list(read.looked)


def named(provenance: Optional[Provenance]) -> str:
    """'the config read from X' or 'no config file (tbkit looked for config.json in …)'."""
    file = getattr(provenance, "config_file", None)
    if file:
        return f"the config read from {file}"
    looked = getattr(provenance, "config_looked", None) or []
    where = f" (tbkit looked for {NAME} in {_listed(looked)})" if looked else ""
    return f"no config file{where}"


def lacks(provenance: Optional[Provenance]) -> str:
    """The end of 'X() requires k, …': which config lacks it, or that none was read (and where looked)."""
    file = getattr(provenance, "config_file", None)
    if file:
        return f"which the config read from {file} does not provide"
    looked = getattr(provenance, "config_looked", None) or []
    if looked:
        return f"and no config file was read (tbkit looked for {NAME} in {_listed(looked)})"
    return "which the config does not provide"


def add_keys_hint(provenance: Optional[Provenance], keys: str) -> str:
    """How to supply ``keys``: in the file that was read, or — none read — where one would be found."""
    file = getattr(provenance, "config_file", None)
    if file:
        return f"Add {keys} to {file} (the config tbkit read), or give another with {_FIX}."
    looked = getattr(provenance, "config_looked", None) or []
    if looked:
        return f"Put a {NAME} with {keys} in {looked[0]}, or pass {_FIX}."
    return f"Give {keys} with {_FIX}."


def where_it_goes(file: Path, explicit: Optional[Path]) -> str:
    """For the module form of a file: how its config is given there."""
    if explicit is not None:
        return f"the --config file {explicit} is read in that form the same way"
    beside = file.parent / NAME
    if sfiles.what_is(beside) == "a regular file":
        return f"its config {beside} is read in that form too"
    return f"give its config with --config FILE or place it at {beside}"


def _listed(items: Sequence[object]) -> str:
    return ", ".join(map(str, items))


def _unique(folders: Sequence[Union[str, Path]]) -> list[Union[str, Path]]:
    seen: set[str] = set()
    out: list[Union[str, Path]] = []
    for f in folders:
        key = str(Path(f).resolve()) if not str(f).startswith("<") else str(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
