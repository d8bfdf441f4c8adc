"""`chargen corpus fetch`: downloads from a local HTTP server, checked against the pinned sha256.

No test touches the internet. The server serves what each test puts in `served`; a stand-in entry
(`sample`) replaces the known corpora where a test needs content of its own.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from chargen import downloads
from chargen.downloads import KnownCorpus

from helpers import assert_user_error, run_cli  # noqa: E402

SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
CONTENT = "".join(f"line {i}: the quick brown fox\n" for i in range(5000)).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    served: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.hits.append(self.path)
        body = self.served.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server():
    """A local HTTP server; returns (base address, served dict, list of requested paths)."""
    served, hits = {}, []
    handler = type("Handler", (_Handler,), {"served": served, "hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def sample_corpus(server, monkeypatch):
    """A known corpus `sample` whose canonical address is on the local server, serving CONTENT."""
    base, served, hits = server
    served["/sample.txt"] = CONTENT
    known = KnownCorpus("sample", f"{base}/sample.txt", hashlib.sha256(CONTENT).hexdigest(), len(CONTENT), "test text")
    monkeypatch.setattr(downloads, "KNOWN", {"sample": known})
    return base, served, hits


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_saves_the_verified_file_and_says_how_to_train_on_it(sample_corpus, tmp_path):
    result = run_cli("corpus", "fetch", "sample", "--output", tmp_path / "corpora")
    assert result.exit_code == 0, result.output
    saved = tmp_path / "corpora" / "sample.txt"
    assert saved.read_bytes() == CONTENT
    assert leftovers(tmp_path / "corpora") == ["sample.txt"]
    assert f"fetched {saved}" in result.stdout and f"chargen train {saved}" in result.stdout


def test_a_verified_copy_is_not_downloaded_again(sample_corpus, tmp_path):
    _, _, hits = sample_corpus
    assert run_cli("corpus", "fetch", "sample", "--output", tmp_path).exit_code == 0
    again = run_cli("corpus", "fetch", "sample", "--output", tmp_path)
    assert again.exit_code == 0, again.output
    assert "already there" in again.stdout
    assert hits == ["/sample.txt"]


def test_default_folder_is_the_user_cache(sample_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run_cli("corpus", "fetch", "sample").exit_code == 0
    assert (tmp_path / "cache" / "chargen" / "corpora" / "sample.txt").read_bytes() == CONTENT


@pytest.mark.parametrize(("body", "fragment"), [
    (CONTENT[:-1] + b"!", "is not the pinned sample"),  # altered
    (CONTENT[:1000], "is not the pinned sample"),  # truncated
    (CONTENT + b"more", "sent more than"),  # longer than the corpus
])
def test_a_download_that_does_not_match_saves_nothing(sample_corpus, tmp_path, body, fragment):
    _, served, _ = sample_corpus
    served["/sample.txt"] = body
    result = run_cli("corpus", "fetch", "sample", "--output", tmp_path)
    assert_user_error(result, fragment)
    assert leftovers(tmp_path) == []


def test_a_missing_address_is_one_line_naming_it(sample_corpus, tmp_path):
    base, _, _ = sample_corpus
    result = run_cli("corpus", "fetch", "sample", "--output", tmp_path, "--url", f"{base}/moved.txt")
    assert_user_error(result, "HTTP 404", f"{base}/moved.txt", "--url")
    assert leftovers(tmp_path) == []


def test_an_unreachable_server_is_one_line(sample_corpus, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("corpus", "fetch", "sample", "--output", tmp_path, "--url", f"http://127.0.0.1:{port}/x.txt")
    assert_user_error(result, "could not download sample", "refused")
    assert leftovers(tmp_path) == []


def test_an_existing_different_file_is_never_overwritten(sample_corpus, tmp_path):
    mine = tmp_path / "sample.txt"
    mine.write_text("my own notes")
    result = run_cli("corpus", "fetch", "sample", "--output", tmp_path)
    assert_user_error(result, "exists but is not the pinned sample")
    assert mine.read_text() == "my own notes"


def test_unknown_name_lists_the_known_ones(tmp_path):
    assert_user_error(run_cli("corpus", "fetch", "war-and-peace", "--output", tmp_path), "war-and-peace",
                      "tinyshakespeare")


def test_no_name_lists_the_known_corpora_with_their_addresses():
    result = run_cli("corpus", "fetch")
    assert result.exit_code == 0
    known = downloads.KNOWN["tinyshakespeare"]
    assert known.url in result.stdout and f"{known.size:,} bytes" in result.stdout


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(), reason="needs ../shared/corpora/tinyshakespeare.txt")
def test_the_pinned_tinyshakespeare_is_the_shared_copy_fetched_from_a_mirror(server, tmp_path):
    """The pinned hash and size are those of the public file (the shared copy is that file)."""
    base, served, _ = server
    served["/input.txt"] = SHARED_SHAKESPEARE.read_bytes()
    result = run_cli("corpus", "fetch", "tinyshakespeare", "--output", tmp_path, "--url", f"{base}/input.txt")
    assert result.exit_code == 0, result.output
    fetched = tmp_path / "tinyshakespeare.txt"
    assert fetched.read_bytes() == SHARED_SHAKESPEARE.read_bytes()
    assert fetched.stat().st_size == downloads.KNOWN["tinyshakespeare"].size
