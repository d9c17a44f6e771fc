"""The gist loader end to end against a fake GitHub API on 127.0.0.1 (tests/support/gist_server.py)."""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from pathlib import Path

import pytest

import tbkit
from gist_server import FakeGitHub
from tbkit.errors import SourceError
from tbkit.sources import cache, content_sha256
from tbkit.sources.gist import GistClient, parse_ref

EXPORTS = Path(__file__).parents[1] / "fixtures" / "exports"
GIST_ID = "aa11bb22cc33dd44ee55"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("GITHUB_TOKEN", "TBKIT_GITHUB_API", "TBKIT_OFFLINE", "TBKIT_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a CI proxy must not see the fake API's traffic
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with FakeGitHub() as fake:
        yield fake


def kw(server, tmp_path, **extra):
    return {**dict(api_url=server.url, cache_dir=tmp_path / "cache", retries=2, backoff=0.01, timeout=5), **extra}


def test_fetch_pins_revision_caches_and_reports_provenance(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary", owner="alice")
    lines = []
    m = tbkit.load(GIST_ID, log=lines.append, **kw(server, tmp_path))
    p = m.provenance
    assert (p.source, p.gist_id, p.owner, p.revision, p.from_cache) == ("gist", GIST_ID, "alice", sha, False)
    assert p.fetched_at and p.fetched_at.endswith("+00:00")
    files = {f.name: (EXPORTS / "gpt_rotary" / f.name).read_bytes() for f in p.files}
    assert set(files) == {"model.py", "config.json"}
    assert p.content_sha256 == content_sha256(files)
    # content_sha256 is exactly what loaded.py documents: name, NUL, bytes, NUL, sorted by name.
    manual = hashlib.sha256(b"".join(n.encode() + b"\0" + files[n] + b"\0" for n in sorted(files))).hexdigest()
    assert p.content_sha256 == manual
    assert all(f.sha256 == hashlib.sha256(files[f.name]).hexdigest() for f in p.files)
    text = str(p)
    assert f"gist {GIST_ID} by alice at revision {sha}" in text and p.content_sha256 in text
    assert lines == [text]  # shown before the code ran
    cached = tmp_path / "cache" / GIST_ID / sha
    assert (cached / "model.py").read_bytes() == files["model.py"]
    assert not [q for q in (tmp_path / "cache" / GIST_ID).iterdir() if q.name.startswith(".tmp-")]
    assert m.module.__class__.__module__.startswith("tbkit_user_model_")
    assert m.kind == "decoder" and m.vocab_size == 200


def test_pinned_revision_comes_from_cache_without_network(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    before = len(server.requests)
    m = tbkit.load(f"{GIST_ID}@{sha}", **kw(server, tmp_path))
    assert len(server.requests) == before
    assert m.provenance.from_cache and m.provenance.revision == sha
    assert "(from cache)" in str(m.provenance)


def test_offline_reuses_newest_cached_revision_and_says_so(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    server.stop()  # the network is gone: nothing listens on the discard port either
    m = tbkit.load(GIST_ID, api_url="http://127.0.0.1:9", cache_dir=tmp_path / "cache", retries=1, backoff=0.01)
    assert m.provenance.from_cache and m.provenance.revision == sha
    assert any("could not be reached" in n for n in m.notes)
    m2 = tbkit.load(GIST_ID, offline=True, cache_dir=tmp_path / "cache")
    assert m2.provenance.from_cache and any("offline mode" in n for n in m2.notes)


def test_older_revision_by_id_at_sha_and_by_url(server, tmp_path):
    rotary = EXPORTS / "gpt_rotary"
    old = server.add_gist(
        GIST_ID,
        {
            "model.py": (rotary / "model.py").read_bytes(),
            "config.json": '{"vocab_size": 150, "d_model": 16, "nhead": 2, "num_layers": 1}',
        },
    )
    new = server.add_folder(GIST_ID, rotary)
    assert tbkit.load(GIST_ID, **kw(server, tmp_path)).vocab_size == 200
    m_old = tbkit.load(f"https://gist.github.com/alice/{GIST_ID}/{old}", **kw(server, tmp_path))
    assert (m_old.vocab_size, m_old.provenance.revision) == (150, old)
    m_api = tbkit.load(f"{server.url}/gists/{GIST_ID}", revision=new, **kw(server, tmp_path))
    assert m_api.provenance.revision == new and m_api.provenance.from_cache  # cached by the first load
    assert server.hits(f"/gists/{GIST_ID}/{old}") == 1


def test_truncated_file_is_fetched_from_raw_url(tmp_path):
    with FakeGitHub(truncate_at=300) as fake:
        fake.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
        m = tbkit.load(GIST_ID, **kw(fake, tmp_path))
        assert fake.hits(f"/raw/{GIST_ID}/") == 1  # model.py is > 300 bytes, config.json is not
        assert m.provenance.files[1].size == (EXPORTS / "gpt_rotary" / "model.py").stat().st_size


def test_token_sent_to_api_only_and_never_shown(tmp_path, monkeypatch):
    secret = "ghp_TESTSECRET0123456789"
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    with FakeGitHub(truncate_at=300, raw_host="localhost") as fake:
        fake.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
        m = tbkit.load(GIST_ID, **kw(fake, tmp_path))
        api = [h for p, h in fake.requests if p.startswith("/gists/")]
        raw = [h for p, h in fake.requests if p.startswith("/raw/")]
        assert api and all(h.get("Authorization") == f"Bearer {secret}" for h in api)
        assert raw and all("Authorization" not in h for h in raw)  # another host never gets the token
    assert secret not in str(m.provenance) and secret not in repr(m.provenance) and secret not in m.summary()
    client = GistClient("http://127.0.0.1:1", secret)
    assert secret not in repr(client) and "set" in repr(client)


def test_500_then_success_retries_with_backoff(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    server.queue(f"/gists/{GIST_ID}", 500)
    server.queue(f"/gists/{GIST_ID}", 502)
    m = tbkit.load(GIST_ID, **kw(server, tmp_path))
    assert server.hits(f"/gists/{GIST_ID}") == 3 and m.kind == "decoder"


def test_short_retry_after_is_waited_once(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    server.queue(f"/gists/{GIST_ID}", 429, {"retry-after": "1"}, {"message": "secondary rate limit"})
    t0 = time.monotonic()
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    assert time.monotonic() - t0 >= 1.0
    assert server.hits(f"/gists/{GIST_ID}") == 2


def test_rate_limit_is_not_retried_blindly(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    reset = int(time.time()) + 1800
    for _ in range(3):
        server.queue(
            f"/gists/{GIST_ID}",
            403,
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
            {"message": "API rate limit exceeded"},
        )
    with pytest.raises(SourceError) as info:
        tbkit.load(GIST_ID, **kw(server, tmp_path))
    msg = str(info.value)
    assert server.hits(f"/gists/{GIST_ID}") == 1
    assert time.strftime("%H:%M", time.gmtime(reset)) in msg and "Set GITHUB_TOKEN to lift the limit" in msg


def test_slow_response_within_timeout_succeeds(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    server.queue(f"/gists/{GIST_ID}", delay=0.5)
    assert (
        tbkit.load(
            GIST_ID,
            **kw(
                server,
                tmp_path,
            ),
        ).kind
        == "decoder"
    )


def test_api_base_from_environment(server, tmp_path, monkeypatch):
    server.add_folder(GIST_ID, EXPORTS / "encoder_nodes")
    monkeypatch.setenv("TBKIT_GITHUB_API", server.url)
    m = tbkit.load(f"https://api.github.com/gists/{GIST_ID}", cache_dir=tmp_path / "c", retries=0)
    assert m.kind == "encoder" and server.hits("/gists/") == 1


def test_default_cache_location_is_xdg(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, api_url=server.url, retries=0)
    assert (tmp_path / "xdg" / "tbkit" / "gists" / GIST_ID / sha / "model.py").is_file()


def test_expected_sha256_accepts_matching_content(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    first = tbkit.load(GIST_ID, **kw(server, tmp_path))
    again = tbkit.load(GIST_ID, expected_sha256=first.provenance.content_sha256.upper(), **kw(server, tmp_path))
    assert again.provenance.content_sha256 == first.provenance.content_sha256


@pytest.mark.parametrize(
    "ref, expected",
    [
        (GIST_ID, (GIST_ID, None)),
        (GIST_ID.upper(), (GIST_ID, None)),
        (f"{GIST_ID}@{SHA}", (GIST_ID, SHA)),
        (f"https://gist.github.com/alice/{GIST_ID}", (GIST_ID, None)),
        (f"https://gist.github.com/alice/{GIST_ID}/{SHA}", (GIST_ID, SHA)),
        (f"gist.github.com/alice/{GIST_ID}.git", (GIST_ID, None)),
        (f"https://gist.github.com/{GIST_ID}", (GIST_ID, None)),
        (f"https://gist.github.com/alice/{GIST_ID}#file-model-py", (GIST_ID, None)),
        (f"https://api.github.com/gists/{GIST_ID}/{SHA}", (GIST_ID, SHA)),
        (f"https://gist.githubusercontent.com/alice/{GIST_ID}/raw/{SHA}/model.py", (GIST_ID, SHA)),
    ],
)
def test_parse_ref_forms(ref, expected):
    assert parse_ref(ref) == expected


def test_rate_limit_resetting_within_seconds_is_waited_once(server, tmp_path):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    server.queue(
        f"/gists/{GIST_ID}", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 1)}
    )
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    assert server.hits(f"/gists/{GIST_ID}") == 2


def test_final_api_error_points_at_a_cached_revision(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    server.queue(f"/gists/{GIST_ID}", 429, {"retry-after": "3600"})
    with pytest.raises(SourceError) as info:
        tbkit.load(GIST_ID, **kw(server, tmp_path))
    assert "rate limit" in str(info.value) and f"revision='{sha}'" in str(info.value)


def test_token_does_not_follow_a_redirect_to_another_host(server, tmp_path, monkeypatch):
    secret = "ghp_REDIRECTSECRET42"
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    port = server.url.rsplit(":", 1)[1]
    server.queue(f"/gists/{GIST_ID}", 302, {"Location": f"http://localhost:{port}/gists/{GIST_ID}/moved"})
    server.queue(f"/gists/{GIST_ID}/moved", 302, {"Location": f"http://localhost:{port}/gists/{GIST_ID}/again"})
    server.queue(f"/gists/{GIST_ID}/again", 404)
    with pytest.raises(SourceError):
        tbkit.load(GIST_ID, **kw(server, tmp_path))
    first, *redirected = [h for p, h in server.requests if p.startswith(f"/gists/{GIST_ID}")]
    assert first.get("Authorization") == f"Bearer {secret}"
    assert len(redirected) == 2 and all("Authorization" not in h for h in redirected)


def test_credentials_in_a_gist_url_never_reach_logs_provenance_or_report(server, tmp_path):
    """Issue 17: a URL with user:password@ loads (the id is what counts) and the password appears
    nowhere: not in the log, the provenance (text or dict) or the report written from it."""
    password = "hunter2-GIST-PASSWORD"
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary", owner="alice")
    lines = []
    url = f"https://alice:{password}@gist.github.com/alice/{GIST_ID}"
    m = tbkit.load(url, log=lines.append, **kw(server, tmp_path))
    assert m.provenance.gist_id == GIST_ID
    report = tbkit.run(m, checks=["summary"], out_dir=tmp_path / "rep", progress=False, stream=io.StringIO())
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "rep").rglob("*") if p.is_file())
    for text in ("\n".join(lines), str(m.provenance), repr(m.provenance.to_dict()), report.to_json(), written):
        assert password not in text


def test_a_cached_revision_that_vanishes_while_it_is_read_is_one_paragraph(server, tmp_path, monkeypatch):
    server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    # another process empties the cache between finding the newest revision and reading it
    found = cache.newest_cached
    monkeypatch.setattr(
        cache, "newest_cached", lambda root, gist_id: [found(root, gist_id), shutil.rmtree(root / gist_id)][0]
    )
    with pytest.raises(SourceError) as err:
        tbkit.load(GIST_ID, offline=True, cache_dir=tmp_path / "cache")
    assert "disappeared" in str(err.value) and "Load again" in str(err.value)


def test_a_cached_revision_whose_metadata_is_not_an_object_is_passed_over(server, tmp_path):
    sha = server.add_folder(GIST_ID, EXPORTS / "gpt_rotary")
    tbkit.load(GIST_ID, **kw(server, tmp_path))
    bogus = cache.revision_dir(tmp_path / "cache", GIST_ID, "f" * 40)
    bogus.mkdir()
    (bogus / cache.META_NAME).write_text("[1, 2]")
    m = tbkit.load(GIST_ID, offline=True, cache_dir=tmp_path / "cache")
    assert m.provenance.revision == sha
