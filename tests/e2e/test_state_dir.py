"""One gateway per state dir: a second `scoregate serve` on a dir being served refuses
to start (it would run the same replicas from the same store, then take gateway.json
away from the first when it stops); the dir is free again once its gateway has gone,
also after kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from serving.store.sqlite import SqliteStore
from tests.support.gateway import REPO, GatewayProcess, _env


def second_serve(state_root):
    return subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(state_root),
                           "--port", "0", "--admin-port", "0"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def test_a_second_gateway_on_a_served_state_dir_refuses_and_the_first_keeps_serving(tmp_path):
    first = GatewayProcess(tmp_path / "state").start()
    try:
        info = first.info
        refused = second_serve(first.state.root)
        assert refused.returncode == 1
        assert f"another gateway (pid {first.process.pid}) is serving the state dir" in refused.stderr
        assert first.state.read_gateway() == info  # gateway.json still names the first, which the CLI reaches
        assert first.cli_json("endpoint", "list") == []
        first.stop(signal.SIGKILL)
        # kill -9 leaves no lock behind: the next gateway starts on the dir.
        again = GatewayProcess(tmp_path / "state").start()
        try:
            assert again.state.read_gateway().pid not in (info.pid, None) and again.cli_json("endpoint", "list") == []
        finally:
            again.kill_everything()
    finally:
        first.kill_everything()


def serve_on(state_root, timeout_s: float = 15):
    """`serve` on a state dir it should refuse: it must end by itself, before any port."""
    return subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(state_root),
                           "--port", "0", "--admin-port", "0"], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO, env=_env())


def used_store(root):
    """A state dir whose store.db spans several pages, closed cleanly (checkpointed)."""
    root.mkdir()
    store = SqliteStore(root / "store.db")
    for index in range(400):
        store.secret(f"filler-{index}")
    store.close()
    assert (root / "store.db").stat().st_size > 3 * 4096
    return root / "store.db"


def assert_refused(done, line: str) -> None:
    assert done.returncode == 1, done.stderr
    assert f"cannot start: {line}" in done.stderr
    assert "Traceback" not in done.stderr and "listening" not in done.stderr


def test_a_damaged_store_is_refused_in_one_line_before_any_port(tmp_path):
    """It opened the scoring port, then ended in a 40-line traceback (sqlite3.DatabaseError:
    database disk image is malformed)."""
    path = used_store(tmp_path / "state")
    with open(path, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xde\xad" * 2048)
    done = serve_on(tmp_path / "state")
    assert_refused(done, f"{path} is damaged (")
    assert "restore it from a backup, or move it away to start with an empty state" in done.stderr


def test_an_empty_store_in_a_used_state_dir_is_refused(tmp_path):
    """A 0-byte store.db started a gateway with no endpoints at all, without a word."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "store.db").write_bytes(b"")
    done = serve_on(tmp_path / "state")
    assert_refused(done, f"{tmp_path / 'state' / 'store.db'} is empty")
    assert "delete it to start with an empty state" in done.stderr


@pytest.mark.parametrize("damage", ["empty", "header", "page"])
def test_a_damaged_or_emptied_batch_db_is_refused_in_one_line(tmp_path, damage):
    """batch.db is opened as the store is: a damaged one ended the start in a traceback,
    and an emptied one lost every batch job without a word."""
    from serving.batch.db import Database

    root = tmp_path / "state"
    root.mkdir()
    path = root / "batch.db"
    if damage == "empty":
        path.write_bytes(b"")
    else:
        db = Database(path)
        with db.transaction() as conn:
            conn.execute("CREATE TABLE filler (x TEXT)")
            conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 200,)] * 200)
        with db.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        with open(path, "r+b") as handle:
            handle.seek(0 if damage == "header" else 8192)
            handle.write(b"\xde\xad" * 2048)
    done = serve_on(root)
    assert_refused(done, f"{path} is {'empty' if damage == 'empty' else 'damaged ('}")


@pytest.mark.parametrize("folder", ["logs", "tls", "batch", "models"])
def test_a_state_dir_folder_that_is_a_file_is_refused(tmp_path, folder):
    """STATE/logs as a plain file: the gateway served, every replica failed in stage
    environment ('Not a directory') and restarted in a loop, the access log went nowhere."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / folder).write_text("")
    assert_refused(serve_on(tmp_path / "state"), f"{tmp_path / 'state' / folder} is not a directory")


def test_a_fresh_state_dir_still_starts(tmp_path):
    """No store.db at all: SQLite makes it (only an empty one left behind is refused)."""
    gateway = GatewayProcess(tmp_path / "state").start()
    try:
        assert gateway.cli_json("endpoint", "list") == []
        assert (tmp_path / "state" / "store.db").stat().st_size > 0
    finally:
        gateway.kill_everything()
