"""Does another distribution own files of the `tbkit` package?

tbkit is distributed as `tbkit-ml`; the name `tbkit` on PyPI belongs to an unrelated project that
also installs a top-level `tbkit` package. pip lets both write into the same `tbkit/` folder, and
uninstalling one then deletes files of the other. This module finds such a second owner by reading
the `*.dist-info/RECORD` files of the site directory that holds the imported package, with plain
file reads (no importlib.metadata: `import tbkit` calls the quick variant and must stay light).

* ``check(thorough=False)`` (at import): our own RECORD against the package folder's top level —
  an entry we did not install, or one of our top-level files with another size. Only then are the
  other RECORDs read, to name the owner.
* ``check(thorough=True)`` (``tbkit doctor``): every RECORD in the site directory, and the size of
  every file we installed.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from typing import Optional

DISTRIBUTION = "tbkit-ml"
PACKAGE = "tbkit"
_OURS = DISTRIBUTION.replace("-", "_") + "-"  # how pip spells our dist-info folder: tbkit_ml-0.1.0.dist-info
_IGNORED = {"__pycache__"}  # written by the interpreter, owned by no one


class Owner:
    """A distribution other than ours that lists files under ``tbkit/`` in its RECORD."""

    __slots__ = ("files", "name", "version")

    def __init__(self, name: str, version: str, files: list[str]) -> None:
        self.name, self.version, self.files = name, version, files

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "files": list(self.files)}


class OwnershipReport:
    def __init__(self, site: Optional[str], ours: Optional[str], owners: list[Owner], changed: list[str]) -> None:
        self.site = site  # the directory holding the imported `tbkit` package
        self.ours = ours  # our dist-info folder name there, or None (source checkout, editable)
        self.owners = owners  # other distributions with files under tbkit/
        self.changed = changed  # our files that are missing or have another size than we installed

    @property
    def ok(self) -> bool:
        return not self.owners and not self.changed

    @property
    def version(self) -> Optional[str]:
        return _split_dist_info(self.ours)[1] if self.ours else None

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "site": self.site,
            "dist_info": self.ours,
            "owners": [o.to_dict() for o in self.owners],
            "changed": list(self.changed),
        }

    def warning_line(self) -> str:
        """One line for ``import tbkit``; ``tbkit doctor`` has the details."""
        who = ", ".join(f"{o.name} {o.version}" for o in self.owners) or "another install"
        return (
            f"the `tbkit` package in {self.site} also holds files of {who}, not part of {DISTRIBUTION}; "
            "run `tbkit doctor` for how to remove it."
        )

    def advice(self) -> str:
        """One paragraph: what was found, and the exact commands that fix it."""
        if self.ok and self.ours is None:
            return f"package ownership: OK (tbkit runs from {self.site}, not from an installed wheel)"
        if self.ok:
            return f"package ownership: OK (only {DISTRIBUTION} {self.version} installs files into the `tbkit` package)"
        parts = []
        for o in self.owners:
            shown = ", ".join(o.files[:3]) + (f", … ({len(o.files)} files)" if len(o.files) > 3 else "")
            parts.append(
                f"the distribution `{o.name}` {o.version} also installs files into the `tbkit` package ({shown})"
            )
        if self.changed:
            shown = ", ".join(self.changed[:3]) + (" …" if len(self.changed) > 3 else "")
            parts.append(f"{len(self.changed)} file(s) of {DISTRIBUTION} were replaced or removed ({shown})")
        pin = f"=={self.version}" if self.version else ""
        # the other distribution's name comes from its own metadata: quoted, it stays one argument
        fix = [f"python -m pip uninstall -y {shlex.quote(o.name)}" for o in self.owners]
        fix.append(f"python -m pip install --no-deps --force-reinstall {shlex.quote(DISTRIBUTION + pin)}")
        if self.owners:
            what = (
                f". `{PACKAGE}` on PyPI is an unrelated project; this one is published as `{DISTRIBUTION}`. "
                "Remove the other distribution, then reinstall tbkit so that its files are whole again "
                "(uninstalling the other one deletes the files they share):"
            )
        else:
            what = ". Reinstall tbkit so that its files are whole again:"
        return (
            f"package ownership: {'CONFLICT' if self.owners else 'INCOMPLETE'} in {self.site}: "
            + "; ".join(parts)
            + what
            + "\n    "
            + "\n    ".join(fix)
            + "\nIn a notebook, run them with %pip and then restart the runtime."
        )


def check(package_dir: Optional[str] = None, thorough: bool = False) -> OwnershipReport:
    """Who owns the files of the `tbkit` package at ``package_dir`` (default: the imported one)."""
    if package_dir is None:
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tbkit/guard/.. = tbkit/
    site = os.path.dirname(package_dir)
    try:
        dist_infos = [d for d in os.listdir(site) if d.endswith(".dist-info")]
    except OSError:
        return OwnershipReport(site, None, [], [])
    ours = next((d for d in dist_infos if d.lower().startswith(_OURS)), None)
    ours_files = _record(os.path.join(site, ours)) if ours else {}
    changed = _changed(site, ours_files, top_level_only=not thorough)
    suspicious = thorough or bool(changed) or _foreign_entries(package_dir, ours_files)
    if not ours and not thorough:
        suspicious = False  # a source checkout or editable install: there is no RECORD to compare with
    owners = _other_owners(site, dist_infos, ours) if suspicious else []
    return OwnershipReport(site, ours, owners, changed)


def _split_dist_info(name: str) -> tuple[str, str]:
    stem = name[: -len(".dist-info")]
    dist, _, version = stem.partition("-")
    return dist, version


def _record_lines(dist_info: str, mentioning: str = "") -> Iterator[tuple[str, str]]:
    """(path, size) of each RECORD line; none at all when the text does not contain ``mentioning``
    (torch's RECORD alone has thousands of lines: a substring test is much cheaper than parsing)."""
    try:
        with open(os.path.join(dist_info, "RECORD"), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return
    if mentioning not in text:
        return
    for line in text.splitlines():
        # path,hash,size; the path may contain commas (then it is quoted, with "" for a quote)
        head, _, size = line.rpartition(",")
        path = head.rpartition(",")[0]
        if not path:
            continue
        if path.startswith('"') and path.endswith('"'):
            path = path[1:-1].replace('""', '"')
        yield path.replace("\\", "/"), size


def _record(dist_info: str) -> dict[str, Optional[int]]:
    """Our RECORD's entries inside the package: relative path -> size (or None)."""
    prefix = PACKAGE + "/"
    files: dict[str, Optional[int]] = {}
    for path, size in _record_lines(dist_info):
        if path.startswith(prefix):
            files[path] = int(size) if size.isdigit() else None
    return files


def _changed(site: str, ours: dict[str, Optional[int]], top_level_only: bool) -> list[str]:
    changed: list[str] = []
    for path, size in ours.items():
        if size is None or (top_level_only and path.count("/") > 1):
            continue
        try:
            if os.stat(os.path.join(site, path)).st_size != size:
                changed.append(path)
        except OSError:
            changed.append(path)
    return changed


def _foreign_entries(package_dir: str, ours: dict[str, Optional[int]]) -> bool:
    """True when the package folder's top level holds an entry our RECORD does not name."""
    mine = {p.split("/")[1] for p in ours}
    try:
        present = os.listdir(package_dir)
    except OSError:
        return False
    return any(name not in mine and name not in _IGNORED for name in present)


def _other_owners(site: str, dist_infos: list[str], ours: Optional[str]) -> list[Owner]:
    prefix = PACKAGE + "/"
    owners: list[Owner] = []
    for d in sorted(dist_infos):
        if d == ours:
            continue
        # Compiled caches are listed too, but name nothing the user would recognise.
        lines = _record_lines(os.path.join(site, d), mentioning=prefix)
        files = [p for p, _ in lines if p.startswith(prefix) and "/__pycache__/" not in p]
        if files:
            name, version = _split_dist_info(d)
            owners.append(Owner(_metadata_name(os.path.join(site, d)) or name, version, files))
    return owners


def _metadata_name(dist_info: str) -> Optional[str]:
    """The `Name:` header of METADATA (the spelling pip's commands accept)."""
    try:
        with open(os.path.join(dist_info, "METADATA"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                if line.lower().startswith("name:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
