"""A real PostgreSQL server for the distributed-search tests, started from Debian's package.

``postgres_server()`` runs initdb in a fresh temporary data directory, starts the server on a free
port of 127.0.0.1 (TCP only, no Unix socket outside the temp dir) and stops it afterwards.
initdb refuses to run as root, so as root the binaries run as the ``postgres`` OS user (the
Debian package creates it) through ``runuser``/``setpriv``, and the temp dir is chowned to it.

Use the fixture: ``from pg_server import pg_url`` in a test module, then take ``pg_url`` (a
``postgresql://postgres@127.0.0.1:PORT/tbkit`` URL; trust auth, reachable only from this host).
When the binaries are missing the tests skip with the reason (scripts/test.sh installs them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest


def find_bin_dir() -> Optional[Path]:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_db_user() -> list:
    """The argv prefix that runs a command as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "running as root and there is no `postgres` OS user to run initdb as "
            "(install Debian's postgresql package, which creates it)"
        )
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("setpriv"):
        import pwd as _pwd

        pw = _pwd.getpwnam("postgres")
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    pytest.skip("running as root with neither runuser nor setpriv to drop to the postgres user")


@contextlib.contextmanager
def postgres_server(dbname: str = "tbkit") -> Iterator[str]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql; scripts/test.sh does it when it may)"
        )
    prefix = _as_db_user()
    base = Path(tempfile.mkdtemp(prefix="tbkit-pg-"))
    os.chmod(base, 0o755)
    data, log = base / "data", base / "server.log"
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(argv, **kw):
        return subprocess.run(prefix + argv, env=env, check=True, capture_output=True, text=True, **kw)

    port = _free_port()
    started = False
    try:
        run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off -c max_connections=50"
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"])
        started = True
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", dbname])
        yield f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    except subprocess.CalledProcessError as err:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL failed: {err.cmd}\n{err.stdout}\n{err.stderr}\n{tail}") from None
    finally:
        if started:
            subprocess.run(
                prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                env=env,
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        # the server answers; wait for the database to accept connections (it does once createdb ran)
        import psycopg2  # a test dependency (pyproject [test]); its absence is an error, not a skip

        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg2.connect(url).close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
