"""Gists as a source: resolve the revision, fetch it or take it from the per-revision cache,
cache what was fetched, then load the files like a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union, cast

from tbkit.errors import SourceError
from tbkit.sources import cache, gist
from tbkit.sources.loaded import LoadedModel, Provenance
from tbkit.sources.pipeline import Options, content_sha256, from_files


@dataclass
class GistOptions:
    revision: Optional[str] = None
    cache_dir: Union[str, os.PathLike[str], None] = None
    api_url: Optional[str] = None
    token: Optional[str] = None
    timeout: float = 15.0
    max_file_bytes: int = 5 * 1024 * 1024
    retries: int = 3
    backoff: float = 0.5
    max_rate_wait: float = 10.0
    offline: bool = False


def load_gist(text: str, g: GistOptions, opts: Options) -> LoadedModel:
    client = _client(g)
    gist_id, revision = _revision(text, g.revision, client.api_url)
    root = cache.resolve_root(g.cache_dir)
    notes: list[str] = []
    cached = cache.read_revision(root, gist_id, revision) if revision else None  # pinned: no network
    snapshot: Optional[gist.GistSnapshot] = None
    if cached is None:
        snapshot, cached = _fetch_or_cached(client, root, gist_id, revision, g.offline, notes)
    files, provenance = _files_and_provenance(gist_id, snapshot, cached)
    if "model.py" not in files:
        raise SourceError(
            f"gist {gist_id} at revision {provenance.revision} has no model.py "
            f"(files: {', '.join(sorted(files)) or 'none'})",
            _no_model_py_fix(files),
        )
    if snapshot is not None:
        base = _cache_snapshot(root, gist_id, snapshot, files, opts, notes)
    else:
        base = cast(cache.Cached, cached)[2]  # no snapshot: a cached revision was read (_fetch_or_cached)
    return from_files(files, "model.py", provenance, base, opts, notes)


def _no_model_py_fix(files: dict[str, bytes]) -> str:
    from tbkit.sources import exports

    config = files.get("config.json", b"")
    if any(exports.recognise(b.decode("utf-8", "replace")) for b in files.values()) or b'"nodes"' in config:
        return "Export the model from Transformer Builder again (it writes model.py and config.json), or check the gist id."
    return "Check the gist id, or put the model code in the gist as model.py (its config as config.json)."


def _client(g: GistOptions) -> gist.GistClient:
    return gist.GistClient(
        g.api_url or os.environ.get("TBKIT_GITHUB_API") or None,
        g.token if g.token is not None else (os.environ.get("GITHUB_TOKEN") or None),
        timeout=g.timeout,
        retries=g.retries,
        backoff=g.backoff,
        max_file_bytes=g.max_file_bytes,
        max_rate_wait=g.max_rate_wait,
    )


def _revision(text: str, revision: Optional[str], api_url: str) -> tuple[str, Optional[str]]:
    """(gist id, revision or None), the revision given once (in the source or as revision=)."""
    gist_id, ref_revision = gist.parse_ref(text, api_url)
    revision = gist.check_revision(revision)
    if revision and ref_revision and revision != ref_revision:
        raise SourceError(
            f"the source names revision {ref_revision} but revision= says {revision}",
            "Give the revision once, either in the source (<id>@<sha> or URL) or as revision=.",
        )
    return gist_id, revision or ref_revision


def _files_and_provenance(
    gist_id: str, snapshot: Optional[gist.GistSnapshot], cached: Optional[cache.Cached]
) -> tuple[dict[str, bytes], Provenance]:
    if snapshot is not None:
        return snapshot.files, Provenance(
            source="gist",
            location=f"{gist_id}@{snapshot.revision}",
            owner=snapshot.owner,
            gist_id=gist_id,
            revision=snapshot.revision,
            fetched_at=snapshot.fetched_at,
        )
    files, meta, _folder = cast(cache.Cached, cached)  # no snapshot: a cached revision was read
    return files, Provenance(
        source="gist",
        location=f"{gist_id}@{meta.get('revision')}",
        owner=meta.get("owner"),
        gist_id=gist_id,
        revision=meta.get("revision"),
        fetched_at=meta.get("fetched_at"),
        from_cache=True,
    )


def _cache_snapshot(
    root: Path, gist_id: str, snapshot: gist.GistSnapshot, files: dict[str, bytes], opts: Options, notes: list[str]
) -> Optional[Path]:
    """Write a fetched revision to the cache (never content the caller's pin rejects); its folder."""
    if opts.expected_sha256 is not None and opts.expected_sha256 != content_sha256(files):
        return None
    meta = {
        "gist_id": gist_id,
        "revision": snapshot.revision,
        "owner": snapshot.owner,
        "fetched_at": snapshot.fetched_at,
    }
    try:
        return cache.write_revision(root, gist_id, snapshot.revision, files, meta)
    except OSError as err:
        notes.append(f"could not write the cache in {root} ({err.strerror or err}); the code was loaded from memory")
        return None


def _fetch_or_cached(
    client: gist.GistClient, root: Path, gist_id: str, revision: Optional[str], offline: bool, notes: list[str]
) -> tuple[Optional[gist.GistSnapshot], Optional[cache.Cached]]:
    """(snapshot, None) when fetched now; (None, cached revision) when offline or GitHub cannot be
    reached and a revision is cached (said in ``notes``). Other API errors are final; they only
    gain a pointer to a cached revision when one exists."""
    what = f"gist {gist_id}" + (f" at revision {revision}" if revision else "")
    if offline:
        newest = None if revision else cache.newest_cached(root, gist_id)
        if newest is None:
            raise SourceError(
                f"offline mode is on and {what} is not in the cache ({root})",
                "Load it once while online (it is then cached per revision), or turn offline mode off (TBKIT_OFFLINE).",
            )
        notes.append(f"offline mode: used the newest cached revision {newest}")
        return None, _read_cached(root, gist_id, newest)
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
        return None, _read_cached(root, gist_id, newest)
    except SourceError as err:  # rate limit, 404, …
        newest = cache.newest_cached(root, gist_id)
        if newest is None:
            raise
        raise SourceError(err.cause, f"{err.fix} A cached revision of this gist exists: revision={newest!r}.") from None


def _read_cached(root: Path, gist_id: str, revision: str) -> cache.Cached:
    """A cached revision that was just found; one paragraph if it vanished in between (another
    process cleaning the cache), never a crash further on."""
    cached = cache.read_revision(root, gist_id, revision)
    if cached is None:
        folder = cache.revision_dir(root, gist_id, revision)
        raise SourceError(
            f"the cached copy of gist {gist_id} at revision {revision} disappeared from {folder} while it was read",
            "Load again: online, the gist is fetched afresh; offline, an older cached revision is used if one is left.",
        )
    return cached
