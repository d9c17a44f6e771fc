"""Index credentials reach pip through its environment, never its command line (which `ps` shows to
every user), and no fragment of them is printed. Real pip against a real index on 127.0.0.1 that
reads every process's command line while pip is talking to it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tbkit.errors import TbkitError, mask_credentials

SECRET = "SEC@RET99"


def _argvs_with(fragment: str) -> list:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(cmdline)
    return found


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        argvs = [a for a in _argvs_with("RET99") if "pytest" not in a]
        type(self).seen.append((self.path, auth, argvs))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to read command lines")
def test_index_password_goes_to_pip_by_environment_and_is_never_printed(tmp_path):
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://user:{SECRET}@127.0.0.1:{server.server_address[1]}/simple/"
        env = {**os.environ, "TBKIT_PIP_INDEX_URL": url, "PIP_CONFIG_FILE": os.devnull}
        env.pop("TBKIT_PIP_FIND_LINKS", None)
        env.pop("TBKIT_PIP_NO_INDEX", None)
        proc = subprocess.run(
            [sys.executable, "-m", "tbkit", "install", "--dry-run", "tbkit-no-such-package-xyz"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
    finally:
        server.shutdown()
    assert _Recorder.seen, proc.stdout + proc.stderr  # pip did ask the index
    auths = {auth for _, auth, _ in _Recorder.seen if auth}
    assert f"Basic {base64.b64encode(f'user:{SECRET}'.encode()).decode()}" in auths  # creds reached pip
    assert all(not argvs for _, _, argvs in _Recorder.seen), _Recorder.seen  # never on a command line
    assert "RET99" not in proc.stdout + proc.stderr and "SEC" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("http://user:SEC@RET99@host/simple", ["SEC", "RET99", "user"]),
        ("https://tok3n@host/x", ["tok3n"]),
        ("https://host/f?token=T0K&x=1", ["T0K"]),
        ("s3://bucket/k?X-Amz-Sig=1&sig=S1G#frag", ["S1G"]),
        ("https://h/p?access_token=AT1;key=K3Y&password=PW9", ["AT1", "K3Y", "PW9"]),
    ],
)
def test_every_userinfo_form_and_query_token_is_masked(text, hidden):
    masked = mask_credentials(f"pip said: {text} failed")
    assert all(h not in masked for h in hidden), masked
    assert "host" in masked or "bucket" in masked or "h/p" in masked


def test_masking_multi_megabyte_untrusted_text_stays_fast_and_bounded():
    # pathological inputs for a backtracking pattern, 2 MB and more; the whole batch is bounded by the
    # test's own deadline, not a timing assert on one case
    inputs = ["a" * 2_000_000, "a://" * 500_000, "@" * 2_000_000, "http://" + "@" * 2_000_000, "?token=" * 300_000]
    inputs.append(("x " * 600_000) + "http://user:longsecret@host/ " + ("y " * 600_000))
    deadline = time.monotonic() + 60
    for text in inputs:
        err = TbkitError(f"config value {text!r} is bad", "Fix it.")
        assert len(str(err)) < 2500 and "longsecret" not in str(err)
        assert "longsecret" not in mask_credentials(text)
        assert time.monotonic() < deadline
