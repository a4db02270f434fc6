"""The init container's downloader: archives unpacked, digests verified, reasons for the pod status."""

from __future__ import annotations

import hashlib
import http.server
import tarfile
import threading
from functools import partial

import pytest

from serving.backends.kubernetes.downloading import main


@pytest.fixture
def archive(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "score.py").write_text("def init(): pass\n")
    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / "score.py", arcname="score.py")
    return path


def test_file_uri_archive_is_unpacked_and_verified(tmp_path, archive):
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "app"
    assert main(["--dest", str(dest), "--code", f"file://{archive}#sha256={digest}"]) == 0
    assert (dest / "code" / "score.py").read_text() == "def init(): pass\n"


def test_a_digest_mismatch_fails_with_a_reason_for_the_pod_status(tmp_path, archive):
    log = tmp_path / "termination-log"
    code = main(["--dest", str(tmp_path / "app"), "--model", f"{archive}#sha256={'0' * 64}",
                 "--termination-log", str(log)])
    assert code == 1
    assert log.read_text().startswith(f"sha256 mismatch for {archive}: expected 0000")


def test_http_download(tmp_path, archive):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        assert main(["--dest", str(tmp_path / "app"), "--model", url]) == 0
        assert (tmp_path / "app" / "model" / "score.py").exists()
        log = tmp_path / "log"
        assert main(["--dest", str(tmp_path / "x"), "--model", url + ".missing", "--termination-log", str(log)]) == 1
        assert "404" in log.read_text()
    finally:
        server.shutdown()
        server.server_close()
