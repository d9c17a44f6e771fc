"""Where models come from: ``tbkit.load(source)`` → ``LoadedModel``.

Source forms, tried in this order:
- ``None``                          the default bundled example (``tiny_gpt``)
- an ``nn.Module`` instance / class  used as is / constructed from ``config``
- an existing path                  a folder (model.py + config.json) or a ``.py`` file
                                    (config.json beside it is optional)
- a bundled example name            e.g. ``"tiny_gpt"``
- a gist                            ``<id>``, ``<id>@<sha>``, ``https://gist.github.com/<owner>/<id>[/<sha>]``,
                                    ``https://api.github.com/gists/<id>[/<sha>]``

Modules: gist.py (API client), cache.py (per-revision cache), build.py (run the code, pick and
construct the class), inspect_model.py (facts from the real modules, forward contract).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from tbkit.errors import SourceError
from tbkit.sources.loaded import LoadedModel, Provenance, SourceFile

__all__ = ["load", "LoadedModel", "Provenance", "SourceFile", "content_sha256"]

DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_FILE_BYTES = 5 * 1024 * 1024


def content_sha256(files: dict) -> str:
    """sha256 over all files sorted by name: name, NUL, bytes, NUL for each (see Provenance)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def load(
    source=None,
    *,
    revision: Optional[str] = None,
    kind: Optional[str] = None,
    config: Optional[dict] = None,
    expected_sha256: Optional[str] = None,
    cache_dir=None,
    api_url: Optional[str] = None,
    token: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    retries: int = 3,
    backoff: float = 0.5,
    max_rate_wait: float = 10.0,
    offline: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
) -> LoadedModel:
    """Load a model and the facts tbkit needs about it; SourceError (one paragraph) if it cannot.

    ``config`` overrides keys of the source's config.json. ``expected_sha256`` is checked against
    ``Provenance.content_sha256`` before any code runs. ``offline`` (default: ``TBKIT_OFFLINE=1``)
    uses only cached gist revisions. ``log`` receives the provenance text before the model code
    runs (pass ``print`` to show it). ``GITHUB_TOKEN`` and ``TBKIT_GITHUB_API`` are read from the
    environment when ``token`` / ``api_url`` are not given.
    """
    import torch.nn as nn

    from tbkit import examples

    if config is not None and not isinstance(config, dict):
        raise SourceError(f"config must be a dict, not {type(config).__name__}", "Pass config={'key': value, ...}.")
    if expected_sha256 is not None:
        expected_sha256 = str(expected_sha256).strip().lower()
    if offline is None:
        offline = os.environ.get("TBKIT_OFFLINE") == "1"
    opts = dict(kind=kind, config_arg=config, expected_sha256=expected_sha256, log=log)

    if source is None:
        source = examples.DEFAULT
    if isinstance(source, nn.Module) or (isinstance(source, type) and issubclass(source, nn.Module)):
        _no_revision(revision, "a model object")
        return _from_module(source, **opts)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise SourceError(
            f"tbkit.load got a {type(source).__name__}, which is not a model source",
            "Pass a gist id or URL, a folder, a .py file, an nn.Module (instance or class) or an example name "
            f"({', '.join(examples.names())}).",
        )
    text = source.strip()
    path = Path(text).expanduser()
    if text and _exists(path):
        _no_revision(revision, "a local path")
        return _from_path(path, **opts)
    if text in examples.names():
        _no_revision(revision, "a bundled example")
        return _from_files(
            _read_folder(examples.path(text)),
            "model.py",
            "example",
            text,
            examples.path(text),
            require_config=True,
            **opts,
        )

    from tbkit.sources import gist

    if gist.looks_like_gist(text):
        return _from_gist(
            text,
            revision=revision,
            cache_dir=cache_dir,
            api_url=api_url,
            token=token,
            timeout=timeout,
            max_file_bytes=max_file_bytes,
            retries=retries,
            backoff=backoff,
            max_rate_wait=max_rate_wait,
            offline=offline,
            **opts,
        )
    if text.endswith(".py") or os.sep in text or text.startswith((".", "~")):
        raise SourceError(
            f"no such file or folder: {_short(text)}", "Check the path (relative paths start at the current directory)."
        )
    raise SourceError(
        f"{_short(text)} is not an existing path, a bundled example ({', '.join(examples.names())}), "
        "a gist id (20 to 32 hexadecimal characters) or a gist URL",
        "Pass the gist id or URL from Transformer Builder, a folder with model.py and config.json, or a .py file.",
    )


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for a path, or a NUL byte: not a path then
        return False


def _no_revision(revision, what):
    if revision is not None:
        raise SourceError(f"revision= applies to gists only, but the source is {what}", "Leave revision out.")


# ---- local sources -------------------------------------------------------------------------
def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SourceError(
            f"cannot read {path}: {err.strerror or err}", "Check the file exists and is readable."
        ) from None


def _read_folder(folder: Path) -> dict:
    files = {}
    model = folder / "model.py"
    if not model.is_file():
        present = sorted(p.name for p in folder.glob("*.py"))
        raise SourceError(
            f"the folder {folder} has no model.py"
            + (f" (Python files there: {', '.join(present)})" if present else ""),
            "Put the exported model code in model.py, or pass the .py file itself to tbkit.load.",
        )
    files["model.py"] = _read_file(model)
    cfg = folder / "config.json"
    if cfg.is_file():
        files["config.json"] = _read_file(cfg)
    return files


def _from_path(path: Path, **opts) -> LoadedModel:
    path = path.resolve()
    if path.is_dir():
        return _from_files(_read_folder(path), "model.py", "folder", str(path), path, require_config=True, **opts)
    if path.suffix != ".py":
        raise SourceError(
            f"{path} is neither a folder nor a .py file",
            "Pass the folder holding model.py and config.json, or the model's .py file.",
        )
    files = {path.name: _read_file(path)}
    cfg = path.parent / "config.json"
    if cfg.is_file() and path.name != "config.json":
        files["config.json"] = _read_file(cfg)
    return _from_files(files, path.name, "file", str(path), path.parent, require_config=False, **opts)


def _from_module(obj, *, kind, config_arg, expected_sha256, log) -> LoadedModel:
    import torch.nn as nn

    from tbkit.sources import build, inspect_model

    if expected_sha256 is not None:
        raise SourceError(
            "expected_sha256 can only be checked for code loaded from files, and the source is a model object",
            "Load the model from its gist, folder or .py file to pin its content, or drop expected_sha256.",
        )
    cls = obj if isinstance(obj, type) else type(obj)
    provenance = Provenance(source="module", location=f"{cls.__module__}:{cls.__qualname__}")
    if log:
        log(str(provenance))
    config = dict(config_arg or {})
    notes: list = []
    flat = build.flatten_config(config, notes)
    if isinstance(obj, nn.Module):
        model = obj
    else:
        model = build.construct(obj, cls.__qualname__, flat, notes)
    return inspect_model.inspect_and_wrap(model, config, flat, provenance, notes, kind=kind)


# ---- everything that comes as files --------------------------------------------------------
def _from_files(
    files: dict,
    main: str,
    source: str,
    location: str,
    base: Optional[Path],
    *,
    require_config: bool,
    kind,
    config_arg,
    expected_sha256,
    log,
    provenance: Optional[Provenance] = None,
    notes: Optional[list] = None,
) -> LoadedModel:
    from tbkit.sources import build, inspect_model

    notes = list(notes or [])
    if provenance is None:
        provenance = Provenance(source=source, location=location)
    provenance.files = [SourceFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in sorted(files.items())]
    provenance.content_sha256 = content_sha256(files)
    where = location if source != "gist" else f"gist {provenance.gist_id}"
    if expected_sha256 is not None and expected_sha256 != provenance.content_sha256:
        raise SourceError(
            f"the content of {where} has sha256 {provenance.content_sha256}, not the expected {expected_sha256}; "
            "the code changed since it was pinned (or the pin is wrong), so it was not run",
            "Review the change and update expected_sha256, or load the pinned revision with revision=<sha>.",
        )
    if "config.json" in files:
        config = build.parse_config(files["config.json"], f"config.json of {where}")
    elif require_config and config_arg is None:
        raise SourceError(
            f"{where} has no config.json",
            "Add the exported config.json next to model.py, or pass config={...} to tbkit.load.",
        )
    else:
        config = {}
    config = {**config, **(config_arg or {})}
    if log:
        log(str(provenance))
    filename = str(base / main) if base is not None else f"<{where}/{main}>"
    siblings = set(files) | ({p.name for p in base.iterdir()} if base is not None and base.is_dir() else set())
    module = build.exec_model_code(files[main], filename, f"{main} of {where}", siblings - {main})
    try:
        flat = build.flatten_config(config, notes)
        builder, name, how = build.pick_builder(module, config, f"{main} of {where}")
        notes.append(f"model built from {name} ({how})")
        model = build.construct(builder, name, flat, notes)
        return inspect_model.inspect_and_wrap(model, config, flat, provenance, notes, kind=kind)
    except BaseException:
        if sys.modules.get(module.__name__) is module:  # a failed load leaves no module behind
            del sys.modules[module.__name__]
        raise


def _from_gist(
    text: str,
    *,
    revision,
    cache_dir,
    api_url,
    token,
    timeout,
    max_file_bytes,
    retries,
    backoff,
    max_rate_wait,
    offline,
    **opts,
) -> LoadedModel:
    from tbkit.sources import cache, gist

    api_url = api_url or os.environ.get("TBKIT_GITHUB_API") or None
    token = token if token is not None else (os.environ.get("GITHUB_TOKEN") or None)
    client = gist.GistClient(
        api_url,
        token,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_file_bytes=max_file_bytes,
        max_rate_wait=max_rate_wait,
    )
    gist_id, ref_revision = gist.parse_ref(text, client.api_url)
    revision = gist.check_revision(revision)
    if revision and ref_revision and revision != ref_revision:
        raise SourceError(
            f"the source names revision {ref_revision} but revision= says {revision}",
            "Give the revision once, either in the source (<id>@<sha> or URL) or as revision=.",
        )
    revision = revision or ref_revision
    root = cache.resolve_root(cache_dir)
    notes: list = []
    cached = cache.read_revision(root, gist_id, revision) if revision else None  # pinned: no network
    snapshot = None
    if cached is None:
        snapshot, cached = _fetch_or_cached(client, root, gist_id, revision, offline, notes)
    if snapshot is not None:
        files = snapshot.files
        provenance = Provenance(
            source="gist",
            location=f"{gist_id}@{snapshot.revision}",
            owner=snapshot.owner,
            gist_id=gist_id,
            revision=snapshot.revision,
            fetched_at=snapshot.fetched_at,
        )
    else:
        files, meta, _folder = cached
        provenance = Provenance(
            source="gist",
            location=f"{gist_id}@{meta.get('revision')}",
            owner=meta.get("owner"),
            gist_id=gist_id,
            revision=meta.get("revision"),
            fetched_at=meta.get("fetched_at"),
            from_cache=True,
        )
    if "model.py" not in files:
        raise SourceError(
            f"gist {gist_id} at revision {provenance.revision} has no model.py (files: {', '.join(sorted(files)) or 'none'})",
            "Export the model from Transformer Builder again (it writes model.py and config.json), or check the gist id.",
        )
    base = None
    if snapshot is not None:
        expected = opts.get("expected_sha256")
        if expected is None or expected == content_sha256(files):  # never cache content the caller rejected
            try:
                base = cache.write_revision(
                    root,
                    gist_id,
                    snapshot.revision,
                    files,
                    {
                        "gist_id": gist_id,
                        "revision": snapshot.revision,
                        "owner": snapshot.owner,
                        "fetched_at": snapshot.fetched_at,
                    },
                )
            except OSError as err:
                notes.append(
                    f"could not write the cache in {root} ({err.strerror or err}); the code was loaded from memory"
                )
    else:
        base = cached[2]
    return _from_files(
        files,
        "model.py",
        "gist",
        provenance.location,
        base,
        require_config=True,
        provenance=provenance,
        notes=notes,
        **opts,
    )


def _fetch_or_cached(client, root: Path, gist_id: str, revision: Optional[str], offline: bool, notes: list) -> tuple:
    """(snapshot, None) when fetched now; (None, cached revision) when offline or GitHub cannot be
    reached and a revision is cached (said in ``notes``). Other API errors are final; they only
    gain a pointer to a cached revision when one exists."""
    from tbkit.sources import cache, gist

    what = f"gist {gist_id}" + (f" at revision {revision}" if revision else "")
    if offline:
        newest = None if revision else cache.newest_cached(root, gist_id)
        if newest is None:
            raise SourceError(
                f"offline mode is on and {what} is not in the cache ({root})",
                "Load it once while online (it is then cached per revision), or turn offline mode off (TBKIT_OFFLINE).",
            )
        notes.append(f"offline mode: used the newest cached revision {newest}")
        return None, cache.read_revision(root, gist_id, newest)
    try:
        return client.fetch(gist_id, revision), None
    except gist.GistUnreachable as err:
        newest = None if revision else cache.newest_cached(root, gist_id)
        if newest is None:
            raise SourceError(f"{err.cause}, and no cached copy of {what} exists in {root}", err.fix) from None
        notes.append(
            f"GitHub could not be reached ({err.cause}); used the newest cached revision {newest}, "
            "which may be older than the gist's latest"
        )
        return None, cache.read_revision(root, gist_id, newest)
    except SourceError as err:  # rate limit, 404, …
        newest = cache.newest_cached(root, gist_id)
        if newest is None:
            raise
        raise SourceError(err.cause, f"{err.fix} A cached revision of this gist exists: revision={newest!r}.") from None
