"""A PEP 503 simple index on 127.0.0.1, served from a temporary folder by http.server: what pip sees
when `PIP_INDEX_URL` points at a package index (Colab's default is PyPI)."""

from __future__ import annotations

import functools
import html
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _project(wheel: Path) -> str:
    """The normalized project name (PEP 503) of a wheel file name."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # pip's requests would fill the test output
        pass


class SimpleIndex:
    """``with SimpleIndex(root, wheels) as index:`` serves ``index.url`` (…/simple/)."""

    def __init__(self, root: Path, wheels: list) -> None:
        self.root = root
        simple = root / "simple"
        by_project: dict = {}
        for wheel in wheels:
            by_project.setdefault(_project(Path(wheel)), []).append(Path(wheel))
        for project, files in by_project.items():
            folder = simple / project
            folder.mkdir(parents=True, exist_ok=True)
            links = []
            for f in files:
                shutil.copy2(f, folder / f.name)
                links.append(f'<a href="{html.escape(f.name)}">{html.escape(f.name)}</a><br>')
            (folder / "index.html").write_text(
                "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
            )
        projects = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(by_project))
        (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{projects}</body></html>\n")
        handler = functools.partial(_Quiet, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SimpleIndex:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
