"""The state dir: how `serve` and every other CLI verb find each other.

    DIR/gateway.json   admin URL, admin token, scoring URL, CA path, pid, HTTP redirect
                       URL when there is one (mode 0600)
    DIR/store.db       desired state (serving.store.sqlite; mode 0600: it holds the keys)
    DIR/batch.db       batch endpoints and jobs (serving.batch.db; mode 0600, keys too)
    DIR/tls/           development CA and server certificate (tls.devcert)
    DIR/logs/          replica output, one file per replica; access.log
    DIR/models/        model artifacts prepared for rollouts (serving.controller.preparing)
    DIR/batch/         batch job outputs and worker logs (serving.batch)
    DIR/serve.lock     held (flock) by the one gateway serving the dir; holds its pid
Default `./.scoregate`, or `--state-dir` / `SCOREGATE_STATE_DIR`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import orjson

ENV_VAR = "SCOREGATE_STATE_DIR"
DEFAULT = ".scoregate"
# Folders the gateway writes into, each made when first needed.
FOLDERS = ("tls", "logs", "models", "batch")


def private_file(path: str | Path) -> None:
    """Make `path` (created if missing) readable and writable by its owner only. For the
    databases that hold endpoint keys: SQLite gives its journal files the same mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    os.chmod(path, 0o600)  # one made by an earlier release with the umask's mode


def resolve_state_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get(ENV_VAR) or DEFAULT).resolve()


@dataclass(frozen=True)
class GatewayInfo:
    admin_url: str
    admin_token: str
    scoring_url: str
    ca_cert: str
    pid: int
    # Added later, so with a default: files written before it still read.
    redirect_url: str | None = None  # the --http-redirect-port listener
    # With the user's own certificate (no development CA to trust): its chain file, whose
    # first certificate the CLI trusts for this gateway alone (serving.client.gateway_tls).
    server_cert: str | None = None


class StateDirBusy(Exception):
    """Another gateway serves this state dir."""


class StateDirUnusable(Exception):
    """A file or folder of the state dir the gateway cannot use as it is (a damaged
    store.db...): said in one line at start, before any port is open, rather than as a
    traceback or failing replicas once it serves. The message says what to do."""


def open_sqlite_checked(path: Path, open_file, *, held: str, without: str):
    """open_file(path) — a database object with check() and close() — or StateDirUnusable
    when the file cannot be trusted. A damaged file served until a read hit the bad page,
    then ended in a traceback (check(): quick_check, which reads every page once,
    milliseconds at these sizes). An empty one SQLite takes for a new database: `held`
    would be gone without a word. A state dir that never had the file gets a new one,
    made whole before it has its name (_create_sqlite). `without` ends the advice: "to
    start with an empty state"."""
    path = Path(path)
    if not path.exists():
        _create_sqlite(path, open_file)
    if path.is_file() and path.stat().st_size == 0:
        raise StateDirUnusable(f"{path} is empty: {held} are gone; restore it from a backup, "
                               f"or delete it to start {without}")
    try:
        opened = open_file(path)
    except sqlite3.DatabaseError as exc:  # "file is not a database": the header itself
        raise StateDirUnusable(_damaged(path, exc, without)) from None
    try:
        opened.check()
    except sqlite3.DatabaseError as exc:
        opened.close()
        raise StateDirUnusable(_damaged(path, exc, without)) from None
    return opened


def _create_sqlite(path: Path, open_file) -> None:
    """Make a new database under a temporary name and rename it into place once its
    schema is written: a gateway killed during its first start leaves no empty `path`
    (which the next start would refuse as emptied), only the temporary file, made again
    from nothing next time. The rename is atomic, so `path` is either absent or whole."""
    making = path.with_name(f".{path.name}.new")
    for leftover in (making, making.with_name(making.name + "-wal"), making.with_name(making.name + "-shm")):
        leftover.unlink(missing_ok=True)
    open_file(making).close()  # closing the last connection checkpoints and removes the WAL
    descriptor = os.open(making, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(making, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def quick_check(conn: sqlite3.Connection) -> None:
    """sqlite3.DatabaseError naming the first problem PRAGMA quick_check finds, if any."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(problems[0])


def _damaged(path: Path, exc: Exception, without: str) -> str:
    return f"{path} is damaged ({exc}): restore it from a backup, or move it away to start {without}"


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def acquire(self) -> int:
        """Make this process the state dir's only gateway; returns the lock's descriptor
        (close it to let go). Why: two gateways on one dir would run the same replicas from
        one store, and the second would take over gateway.json and delete it when it stops,
        leaving the first unreachable for the CLI. An flock ends with the process, even
        after kill -9, so no lock is ever left behind; the descriptor is not inherited by
        children (replicas, workers)."""
        fd = os.open(self.root / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirBusy(f"another gateway (pid {holder}) is serving the state dir {self.root}: "
                               f"stop it first, or give this one a --state-dir of its own") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @property
    def store_path(self) -> Path:
        return self.root / "store.db"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def gateway_file(self) -> Path:
        return self.root / "gateway.json"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def check_folders(self) -> None:
        """StateDirUnusable if a folder the gateway writes into is a plain file or not
        writable. Checked once at start: `logs` as a file let the gateway serve while every
        replica failed in stage environment, in a restart loop, and the access log went
        nowhere."""
        for name in FOLDERS:
            path = self.root / name
            if os.path.lexists(path) and not path.is_dir():
                raise StateDirUnusable(f"{path} is not a directory: move it away (the gateway makes the folder)")
            if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
                raise StateDirUnusable(f"{path} is not writable by this user: give it back (chmod u+rwx)")

    def write_gateway(self, info: GatewayInfo) -> None:
        tmp = self.gateway_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(info.__dict__, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.gateway_file)

    def read_gateway(self) -> GatewayInfo | None:
        try:
            data = orjson.loads(self.gateway_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return GatewayInfo(**{f.name: data[f.name] for f in fields(GatewayInfo)
                              if f.name in data or f.default is MISSING})

    def remove_gateway(self, pid: int) -> None:
        info = self.read_gateway()
        if info is not None and info.pid == pid:
            self.gateway_file.unlink(missing_ok=True)
