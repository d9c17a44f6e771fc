"""A fake GitHub gist API on 127.0.0.1: real HTTP, real status codes and headers.

Serves ``GET /gists/<id>`` (latest revision), ``GET /gists/<id>/<sha>`` and the files' ``raw_url``
(``/raw/<id>/<sha>/<name>``). Files larger than ``truncate_at`` bytes, and files that are not
UTF-8, come back ``truncated`` with partial / no inline content, as GitHub does for large files.
Scripted responses (``queue``) replace the next answers for a path: errors, rate limits with
``x-ratelimit-*`` / ``retry-after`` headers, or a normal answer after a delay (slow responses).
Every request is recorded (path and headers) so tests can count retries and see the token.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional


@dataclass
class Scripted:
    status: int = 200  # 200 with body None: the normal answer (after `delay`)
    headers: dict = field(default_factory=dict)
    body: Optional[bytes] = None
    delay: float = 0.0


class FakeGitHub:
    def __init__(self, truncate_at: int = 1_000_000, raw_host: Optional[str] = None) -> None:
        self.gists: dict = {}  # id -> {"owner": str | None, "revisions": [(sha, {name: bytes})], newest first}
        self.script: dict = {}  # path -> [Scripted, ...]
        self.requests: list = []  # (path, {header: value})
        self.truncate_at = truncate_at
        self.raw_host = raw_host  # serve raw_url under another host name (e.g. "localhost")
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self._port = 0

    # ---- content -----------------------------------------------------------------------------
    def add_gist(self, gist_id: str, files: dict, owner: Optional[str] = "alice", sha: Optional[str] = None) -> str:
        """Add a revision (newest first); returns its sha. ``files``: name -> bytes or str."""
        files = {n: (b.encode("utf-8") if isinstance(b, str) else b) for n, b in files.items()}
        if sha is None:
            h = hashlib.sha1(gist_id.encode())
            for n in sorted(files):
                h.update(n.encode("utf-8", "surrogateescape") + b"\0" + files[n])
            h.update(str(len(self.gists.get(gist_id, {}).get("revisions", []))).encode())
            sha = h.hexdigest()
        entry = self.gists.setdefault(gist_id, {"owner": owner, "revisions": []})
        entry["revisions"].insert(0, (sha, files))
        return sha

    def add_folder(self, gist_id: str, folder: Path, owner: Optional[str] = "alice") -> str:
        return self.add_gist(
            gist_id, {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}, owner
        )

    def queue(
        self, path: str, status: int = 200, headers: Optional[dict] = None, body=None, delay: float = 0.0
    ) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.script.setdefault(path, []).append(Scripted(status, dict(headers or {}), body, delay))

    def hits(self, prefix: str) -> int:
        return sum(1 for p, _ in self.requests if p.startswith(prefix))

    # ---- server ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def raw_base(self) -> str:
        return f"http://{self.raw_host}:{self._port}" if self.raw_host else self.url

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]  # kept after stop(): late (slow) handlers still answer
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- request handling --------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(req.path).path
        with self._lock:
            self.requests.append((path, dict(req.headers.items())))
            queued = self.script.get(path)
            scripted = queued.pop(0) if queued else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            if scripted.status != 200 or scripted.body is not None:
                return self._send(req, scripted.status, scripted.body or b"", scripted.headers)
        status, body, headers = self._answer(path)
        self._send(req, status, body, headers)

    def _answer(self, path: str) -> tuple:
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
        if len(parts) in (2, 3) and parts[0] == "gists":
            gist = self.gists.get(parts[1])
            revs = gist["revisions"] if gist else []
            if len(parts) == 3:
                revs = [r for r in revs if r[0] == parts[2]]
            if not revs:
                return 404, json.dumps({"message": "Not Found"}).encode(), {}
            return (
                200,
                json.dumps(self._gist_json(parts[1], gist, revs[0])).encode(),
                {"content-type": "application/json"},
            )
        if len(parts) == 4 and parts[0] == "raw":
            gist = self.gists.get(parts[1]) or {"revisions": []}
            for sha, files in gist["revisions"]:
                if sha == parts[2] and parts[3] in files:
                    return 200, files[parts[3]], {"content-type": "text/plain"}
        return 404, json.dumps({"message": "Not Found"}).encode(), {}

    def _gist_json(self, gist_id: str, gist: dict, revision: tuple) -> dict:
        sha, files = revision
        out = {}
        for name, data in files.items():
            raw_url = f"{self.raw_base()}/raw/{gist_id}/{sha}/{urllib.parse.quote(name, safe='')}"
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            entry = {"filename": name, "size": len(data), "raw_url": raw_url, "type": "text/plain", "truncated": False}
            if text is None:
                entry.update(truncated=True, content="")
            elif len(data) > self.truncate_at:
                entry.update(truncated=True, content=data[: self.truncate_at].decode("utf-8", "ignore"))
            else:
                entry["content"] = text
            out[name] = entry
        history = [{"version": s, "committed_at": "2026-01-01T00:00:00Z"} for s, _ in gist["revisions"]]
        return {
            "id": gist_id,
            "url": f"{self.url}/gists/{gist_id}",
            "owner": {"login": gist["owner"]} if gist["owner"] else None,
            "files": out,
            "history": history,
        }

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        try:
            req.send_response(status)
            for k, v in headers.items():
                req.send_header(k, str(v))
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass
