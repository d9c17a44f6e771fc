"""Gist references and the GitHub REST API client (urllib only).

What it does and why:
- ``parse_ref`` turns an id, ``<id>@<sha>`` or a gist / API / raw URL into (id, revision).
- ``GistClient.fetch`` calls ``GET {api}/gists/{id}[/{sha}]``, pins the revision it got, fetches
  ``truncated`` files from their ``raw_url`` and enforces a per-file size limit.
- Timeouts, connection errors and 5xx are retried a bounded number of times with exponential
  backoff. 404 is final ("not found, or private"). A rate limit (403/429) is final too, with the
  reset time and the token hint, except that one short wait (a ``retry-after`` or a reset at most
  ``max_rate_wait`` seconds away) is honoured once: GitHub's secondary limits ask for exactly
  that, and a blind loop would only burn the remaining quota.
- The token goes only to the API host, is never printed and is redacted from every message.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import http.client
import json
import re
import socket
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any, Callable, Optional

from tbkit.errors import SourceError
from tbkit.sources.cache import check_file_name

DEFAULT_API = "https://api.github.com"
_ID = r"[0-9a-fA-F]{20,32}"
_SHA = r"[0-9a-fA-F]{40}"
_BARE = re.compile(rf"^(?P<id>{_ID})(?:@(?P<sha>[^/\s]*))?$")
_MAX_JSON_BYTES = 64 * 1024 * 1024


class _DropAuthOnCrossHostRedirect(urllib.request.HTTPRedirectHandler):
    """urllib copies every header, Authorization included, onto a redirect; to another host
    the token must not follow."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: typing.IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> Optional[urllib.request.Request]:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


class GistUnreachable(SourceError):
    """The API could not be reached after the retries (network down, timeouts, 5xx).
    The loader may fall back to a cached revision, saying so."""


@dataclass
class GistSnapshot:
    gist_id: str
    revision: str
    owner: Optional[str]
    files: dict[str, bytes]  # name -> bytes
    fetched_at: str  # ISO 8601 UTC


def looks_like_gist(text: str) -> bool:
    t = text.strip()
    return (
        bool(_BARE.match(t))
        or "://" in t
        or t.startswith(("gist.github.com", "api.github.com", "gist.githubusercontent.com"))
    )


def parse_ref(text: str, api_url: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(gist_id, revision or None) from an id, ``id@sha`` or URL; SourceError if malformed."""
    t = text.strip()
    m = _BARE.match(t)
    if m:
        return m["id"].lower(), _check_sha(m["sha"], text) if m["sha"] is not None else None
    url = t if "://" in t else "https://" + t
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    segs = [s for s in parts.path.split("/") if s]
    if segs and segs[-1].endswith(".git"):
        segs[-1] = segs[-1][: -len(".git")]
    api_host = urllib.parse.urlsplit(api_url or DEFAULT_API)
    api_prefix = [s for s in api_host.path.split("/") if s]
    gist_id = sha = None
    if host == "gist.github.com":
        # /<owner>/<id>[/<sha>] or /<id>[/<sha>]
        if segs and re.fullmatch(_ID, segs[0]):
            gist_id, rest = segs[0], segs[1:]
        elif len(segs) >= 2:
            gist_id, rest = segs[1], segs[2:]
        else:
            rest = []
        sha = rest[0] if rest else None
    elif host == "gist.githubusercontent.com" and len(segs) >= 2:
        # /<owner>/<id>/raw/<sha>/<file>
        gist_id = segs[1]
        sha = segs[3] if len(segs) >= 4 and segs[2] == "raw" else None
    elif host == "api.github.com" or (api_url and host == (api_host.hostname or "").lower()):
        rest = segs[len(api_prefix) :] if host != "api.github.com" else segs
        if len(rest) >= 2 and rest[0] == "gists":
            gist_id = rest[1]
            sha = rest[2] if len(rest) >= 3 else None
    else:
        raise SourceError(
            f"{_short(text)} is not a gist URL (host {host or 'missing'!r}); tbkit reads gists from "
            "gist.github.com, api.github.com or the configured API base",
            "Pass a gist id, a URL like https://gist.github.com/<owner>/<id>, a folder, a .py file or an example name.",
        )
    if gist_id is None or not re.fullmatch(_ID, gist_id):
        raise SourceError(
            f"could not find a gist id in {_short(text)}; a gist id is 20 to 32 hexadecimal characters",
            "Copy the id from the gist's address bar (https://gist.github.com/<owner>/<id>).",
        )
    return gist_id.lower(), (_check_sha(sha, text) if sha else None)


def check_revision(revision: Optional[str]) -> Optional[str]:
    return None if revision is None else _check_sha(revision, revision)


def _check_sha(sha: object, text: str) -> str:
    if not isinstance(sha, str) or not re.fullmatch(_SHA, sha):
        raise SourceError(
            f"{_short(str(sha))} (from {_short(str(text))}) is not a gist revision; a revision is the full "
            "40-character hexadecimal sha shown in the gist's Revisions tab",
            "Pass the full sha as revision=... or as <id>@<sha>, or leave the revision out to get the latest.",
        )
    return sha.lower()


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


class GistClient:
    def __init__(
        self,
        api_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_file_bytes: int = 5 * 1024 * 1024,
        max_rate_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        scheme = urllib.parse.urlsplit(self.api_url).scheme
        if scheme not in ("http", "https"):
            raise SourceError(
                f"the GitHub API base {_short(self.api_url)} is not an http(s) URL",
                "Set api_url / TBKIT_GITHUB_API to something like https://api.github.com.",
            )
        self._token = token or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_file_bytes = int(max_file_bytes)
        self.max_rate_wait = max_rate_wait
        self._sleep = sleep
        # Built per client, so proxy variables set after import (os.environ in a notebook) count.
        self._opener = urllib.request.build_opener(_DropAuthOnCrossHostRedirect)

    def __repr__(self) -> str:  # never show the token
        return f"GistClient(api_url={self.api_url!r}, token={'set' if self._token else 'unset'})"

    # ---- public ------------------------------------------------------------------------------
    def fetch(self, gist_id: str, revision: Optional[str] = None) -> GistSnapshot:
        url = f"{self.api_url}/gists/{gist_id}" + (f"/{revision}" if revision else "")
        what = f"gist {gist_id}" + (f" at revision {revision}" if revision else "")
        body = self._get(url, what, limit=_MAX_JSON_BYTES, auth=True)
        try:
            data = json.loads(body.decode("utf-8"))
            files_meta = data["files"]
            if not isinstance(files_meta, dict):
                raise TypeError("'files' is not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise self._error(
                f"the API at {self.api_url} answered {what} with something that is not a gist ({err})",
                "Check api_url / TBKIT_GITHUB_API points at the GitHub REST API.",
            ) from None
        if not files_meta:
            raise self._error(
                f"{what} has no files",
                "Check the gist id; a model gist holds model.py (and config.json, as a Transformer Builder export does).",
            )
        resolved = revision or _latest_version(data)
        if not resolved:
            raise self._error(
                f"the API response for {what} names no revision, so the code cannot be pinned",
                "Pass revision=<40-character sha> explicitly.",
            )
        resolved = _check_sha(resolved, f"the API's history for gist {gist_id}")
        files = {}
        for name, entry in files_meta.items():
            check_file_name(name)
            files[name] = self._file_bytes(gist_id, name, entry or {})
        owner = (data.get("owner") or {}).get("login") if isinstance(data.get("owner"), dict) else None
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        return GistSnapshot(gist_id, resolved, owner, files, now)

    # ---- files -------------------------------------------------------------------------------
    def _file_bytes(self, gist_id: str, name: str, entry: dict[str, Any]) -> bytes:
        size = entry.get("size")
        if isinstance(size, int) and size > self.max_file_bytes:
            raise self._too_big(gist_id, name, size)
        content = entry.get("content")
        if entry.get("truncated") or content is None:
            raw_url = entry.get("raw_url")
            if not isinstance(raw_url, str) or urllib.parse.urlsplit(raw_url).scheme not in ("http", "https"):
                raise self._error(
                    f"file {name} of gist {gist_id} is truncated in the API response and has no usable raw_url",
                    "Check the gist in a browser; re-export it if the file is damaged.",
                )
            same_host = urllib.parse.urlsplit(raw_url).netloc == urllib.parse.urlsplit(self.api_url).netloc
            data = self._get(
                raw_url, f"the raw content of {name} in gist {gist_id}", limit=self.max_file_bytes, auth=same_host
            )
        else:
            data = str(content).encode("utf-8", "surrogateescape")
        if len(data) > self.max_file_bytes:
            raise self._too_big(gist_id, name, len(data))
        return data

    def _too_big(self, gist_id: str, name: str, size: int) -> SourceError:
        return self._error(
            f"file {name} of gist {gist_id} is {size} bytes, over the per-file limit of {self.max_file_bytes} bytes",
            "A model export is a few kilobytes; check you have the right gist, or raise max_file_bytes=... if you trust it.",
        )

    # ---- HTTP with retries -------------------------------------------------------------------
    def _get(self, url: str, what: str, *, limit: int, auth: bool) -> bytes:
        """GET with bounded retries (timeouts, connection errors, 5xx); final errors raised at once."""
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "tbkit",
        }
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        rate_wait = {"used": False}
        failures: list[str] = []
        attempt = 0
        while True:
            try:
                return self._once(url, headers, what, limit)
            except urllib.error.HTTPError as err:
                failure = self._http_failure(err, url, what, rate_wait)
                if failure is None:
                    continue  # waited out a short rate limit: try again at once
                failures.append(failure)
            except (
                TimeoutError,
                socket.timeout,
                urllib.error.URLError,
                ConnectionError,
                http.client.HTTPException,
            ) as err:
                failures.append(self._network_failure(err))
            if attempt >= self.retries:
                tried = "; ".join(dict.fromkeys(failures))
                raise GistUnreachable(
                    self._redact(
                        f"could not fetch {what} from {self._host(url)} after {attempt + 1} attempt(s) ({tried})"
                    ),
                    "Check the network connection (in Colab: is the runtime online?) and try again; "
                    "a revision fetched before can be loaded offline by passing revision=<sha>.",
                ) from None
            self._sleep(min(self.backoff * (2**attempt), 8.0))
            attempt += 1

    def _once(self, url: str, headers: dict[str, str], what: str, limit: int) -> bytes:
        req = urllib.request.Request(url, headers=headers, method="GET")
        with self._opener.open(req, timeout=self.timeout) as resp:
            body: bytes = resp.read(limit + 1)  # an http.client.HTTPResponse
        if len(body) > limit:
            raise self._error(
                f"{what} is larger than the limit of {limit} bytes",
                "Check you have the right gist, or raise max_file_bytes=... if you trust it.",
            )
        return body

    def _network_failure(self, err: BaseException) -> str:
        reason = getattr(err, "reason", err) if isinstance(err, urllib.error.URLError) else err
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"timed out after {self.timeout:g} s"
        if isinstance(err, urllib.error.URLError):
            return f"connection failed: {reason}"
        return f"connection failed: {type(err).__name__}"

    def _http_failure(
        self, err: urllib.error.HTTPError, url: str, what: str, rate_wait: dict[str, bool]
    ) -> Optional[str]:
        """A retryable failure's description (5xx), None after waiting out a short rate limit once;
        raises SourceError for final answers (404, 401, 403, rate limits, other statuses)."""
        status, hdrs = err.code, err.headers
        err.close()
        if status == 404:
            raise self._error(
                f"{what} was not found, or it is private (HTTP 404 from {self._host(url)})",
                "Check the id or URL; for a gist only your account can see, set GITHUB_TOKEN to a token of that account.",
            ) from None
        if status == 401:
            raise self._error(
                f"GitHub rejected the credentials while fetching {what} (HTTP 401)",
                "Set GITHUB_TOKEN to a valid token, or unset it for public gists.",
            ) from None
        if status in (403, 429) and _is_rate_limited(status, hdrs):
            wait = _retry_after_seconds(hdrs)
            reset = _reset_time(hdrs)
            if wait is None and reset is not None:  # the primary limit resets within seconds
                wait = max(0.0, (reset - _dt.datetime.now(_dt.timezone.utc)).total_seconds()) + 1.0
            if not rate_wait["used"] and wait is not None and wait <= self.max_rate_wait:
                rate_wait["used"] = True  # a short, explicit retry-after: honour it once
                self._sleep(wait)
                return None
            raise self._rate_limit_error(status, hdrs, what) from None
        if status == 403:
            raise self._error(
                f"GitHub refused access to {what} (HTTP 403, not a rate limit)",
                "Check the gist is public, or set GITHUB_TOKEN to a token allowed to read it.",
            ) from None
        if 500 <= status < 600:
            return f"HTTP {status}"
        raise self._error(
            f"unexpected HTTP {status} from {self._host(url)} while fetching {what}",
            "Check api_url / TBKIT_GITHUB_API and try again.",
        ) from None

    def _rate_limit_error(self, status: int, hdrs: Message, what: str) -> SourceError:
        reset = _reset_time(hdrs)
        when = "at an unknown time (the response carried no reset header)"
        if reset is not None:
            minutes = max(0, round((reset - _dt.datetime.now(_dt.timezone.utc)).total_seconds() / 60))
            when = f"at {reset.strftime('%Y-%m-%d %H:%M:%S')} UTC (in about {minutes} minute(s))"
        if self._token:
            fix = f"The token's own limit is used up; wait until the reset {when.split(' (')[0]}, or load a cached revision with revision=<sha>."
        else:
            fix = (
                "Set GITHUB_TOKEN to lift the limit (60 requests/hour without a token, 5000 with one), "
                "or wait until the reset, or load a cached revision with revision=<sha>."
            )
        return self._error(
            f"GitHub's API rate limit was hit (HTTP {status}) while fetching {what}; the limit resets {when}", fix
        )

    # ---- helpers -----------------------------------------------------------------------------
    def _host(self, url: str) -> str:
        return urllib.parse.urlsplit(url).netloc or url

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _error(self, cause: str, fix: str) -> SourceError:
        return SourceError(self._redact(cause), self._redact(fix))


def _latest_version(data: dict[str, Any]) -> Optional[str]:
    history = data.get("history")
    if isinstance(history, list) and history and isinstance(history[0], dict):
        return history[0].get("version")
    return None


def _is_rate_limited(status: int, hdrs: Message) -> bool:
    if status == 429:
        return True
    return hdrs.get("x-ratelimit-remaining") == "0" or hdrs.get("retry-after") is not None


def _retry_after_seconds(hdrs: Message) -> Optional[float]:
    value = hdrs.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def _reset_time(hdrs: Message) -> Optional[_dt.datetime]:
    wait = _retry_after_seconds(hdrs)
    if wait is not None:
        return (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=wait)).replace(microsecond=0)
    value = hdrs.get("x-ratelimit-reset")
    if value and value.strip().isdigit():
        return _dt.datetime.fromtimestamp(int(value.strip()), _dt.timezone.utc)
    return None
