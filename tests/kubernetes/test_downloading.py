"""The init container's downloader: archives unpacked, digests verified, reasons for the pod status."""

from __future__ import annotations

import hashlib
import io
import os
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


def _hostile(tmp_path, kind: str):
    path = tmp_path / f"{kind}.tar"
    with tarfile.open(path, "w") as tar:
        member = tarfile.TarInfo({"dotdot": "../../escape.txt", "absolute": f"{tmp_path}/escape-abs.txt",
                                  "symlink": "link"}[kind])
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            data = b"not yours\n"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture(params=[True, False], ids=["data-filter", "older-3.11"])
def tar_filter(request, monkeypatch):
    """Both ways of unpacking: Python's "data" filter (3.11.4+) and the rules applied by
    hand where it is missing (Debian 12's python3 is 3.11.2)."""
    if request.param and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter; the other case covers it")
    if not request.param:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_a_member_that_would_reach_outside_is_refused(tmp_path, tar_filter, kind):
    """The download fails, nothing is written outside the model directory, and the pod's
    termination message names the member."""
    source = _hostile(tmp_path, kind)
    dest, log = tmp_path / "deep" / "app", tmp_path / "termination-log"
    assert main(["--dest", str(dest), "--model", str(source), "--termination-log", str(log)]) == 1
    assert not list(tmp_path.rglob("escape.txt"))  # not where "../../" points, nor anywhere
    assert not (dest / "model" / "link").is_symlink()
    assert {"dotdot": "../../escape.txt", "symlink": "link"}[kind] in log.read_text()


def test_an_absolute_member_lands_inside(tmp_path, tar_filter):
    source = _hostile(tmp_path, "absolute")
    dest = tmp_path / "app"
    assert main(["--dest", str(dest), "--model", str(source)]) == 0
    assert not (tmp_path / "escape-abs.txt").exists()
    inside = dest / "model" / str(tmp_path).lstrip("/") / "escape-abs.txt"
    assert inside.read_text() == "not yours\n"


def test_a_plain_archive_unpacks_both_ways(tmp_path, tar_filter):
    """Files come out readable and writable by the unpacking user, owned by it (not by the
    archive's ids), without setuid or group/other write bits."""
    path = tmp_path / "code.tar"
    with tarfile.open(path, "w") as tar:
        data = b"def init(): pass\n"
        member = tarfile.TarInfo("pkg/score.py")
        member.size, member.mode, member.uid, member.gid = len(data), 0o4466, 4242, 4242
        tar.addfile(member, io.BytesIO(data))
    dest = tmp_path / "app"
    assert main(["--dest", str(dest), "--code", str(path)]) == 0
    unpacked = dest / "code" / "pkg" / "score.py"
    assert unpacked.read_bytes() == data
    info = unpacked.stat()
    assert info.st_mode & 0o7777 == 0o644 and info.st_uid == os.getuid()
