"""The per-revision gist cache: safe file names, atomic writes, offline reuse.

Layout: ``<root>/<gist id>/<revision sha>/`` holds the gist's files as fetched, plus
``.tbkit-gist.json`` (owner, fetch time, file list). A revision is immutable, so a folder that
exists is complete: it only ever appears through one ``rename`` of a fully written temp folder.

``<root>`` is the ``cache_dir`` argument, else ``$TBKIT_CACHE_DIR/gists``, else
``$XDG_CACHE_HOME/tbkit/gists``, else ``~/.cache/tbkit/gists``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from tbkit.errors import SourceError

META_NAME = ".tbkit-gist.json"  # starts with a dot, so it can never collide with a safe gist file name

# A gist file name is used as a path component only if it is plainly a file name: no separators,
# no leading dot (no "..", no hidden files), no control or shell-special characters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_GIST_ID = re.compile(r"^[0-9a-fA-F]{1,64}$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")

# A cached revision: (files {name: bytes}, meta dict, folder)
Cached = tuple[dict[str, bytes], dict[str, Any], Path]


def default_root() -> Path:
    env = os.environ.get("TBKIT_CACHE_DIR")
    if env:
        return Path(env) / "gists"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tbkit" / "gists"


def resolve_root(cache_dir: Union[str, os.PathLike[str], None]) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_root()


def check_file_name(name: object) -> str:
    """Return ``name`` if it is safe as a single path component, else raise SourceError."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise SourceError(
            f"the gist contains a file named {name!r}, which is not a plain file name (path separators, "
            "'..', a leading dot, an absolute path or unusual characters); tbkit refuses to write it anywhere",
            "Rename the file in the gist to a plain name such as model.py or config.json.",
        )
    return name


def revision_dir(root: Path, gist_id: str, revision: str) -> Path:
    # Both parts were validated by the caller; assert it here too, since they become paths.
    if not _GIST_ID.match(gist_id) or not _REVISION.match(revision):
        raise SourceError(
            f"refusing to use gist id {gist_id!r} / revision {revision!r} as cache folder names",
            "Use a hexadecimal gist id and a full 40-character revision sha.",
        )
    return root / gist_id / revision


def read_revision(root: Path, gist_id: str, revision: str) -> Optional[Cached]:
    """(files {name: bytes}, meta dict, folder) for a cached revision, or None if not cached."""
    folder = revision_dir(root, gist_id, revision)
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        files = {check_file_name(n): (folder / n).read_bytes() for n in meta["files"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(
            f"the cached copy of gist {gist_id} at revision {revision} in {folder} is damaged ({err})",
            f"Delete the folder {folder} and load again to fetch it afresh.",
        ) from None
    return files, meta, folder


def newest_cached(root: Path, gist_id: str) -> Optional[str]:
    """The cached revision fetched most recently (for offline use of an unpinned gist)."""
    base = root / gist_id
    if not _GIST_ID.match(gist_id) or not base.is_dir():
        return None
    best = None
    for sub in base.iterdir():
        meta_path = sub / META_NAME
        if not _REVISION.match(sub.name) or not meta_path.is_file():
            continue
        try:
            fetched = str(json.loads(meta_path.read_text(encoding="utf-8")).get("fetched_at") or "")
        except (OSError, ValueError, AttributeError):  # unreadable, not JSON, or not an object
            continue
        if best is None or fetched > best[0]:
            best = (fetched, sub.name)
    return best[1] if best else None


def write_revision(root: Path, gist_id: str, revision: str, files: dict[str, bytes], meta: dict[str, Any]) -> Path:
    """Write a revision atomically: everything goes into a temp folder next to the target, which
    is then renamed into place. A crash leaves at most a ``.tmp-*`` folder, never a partial
    revision. Returns the final folder."""
    final = revision_dir(root, gist_id, revision)
    if (final / META_NAME).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for name, data in files.items():
            target = tmp / check_file_name(name)
            # O_EXCL: never follow or overwrite anything that appeared in our private temp dir.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        with open(tmp / META_NAME, "w", encoding="utf-8") as fh:
            json.dump({**meta, "files": sorted(files)}, fh, indent=1, sort_keys=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / META_NAME).is_file():  # another process cached the same revision first
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
