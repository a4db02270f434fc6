"""The init container of a model pod: fetch the model and the code into the shared emptyDir.

`python -m serving.backends.kubernetes.downloading --dest DIR [--model URI] [--code URI]`
puts the model under DIR/model and the code under DIR/code. A URI is http(s):// (proxies
from HTTPS_PROXY / NO_PROXY, as urllib reads them), file:// or an absolute path in the
image; a `#sha256=HEX` suffix is verified; a .tar.gz/.tgz/.tar/.zip is unpacked, any
other file is copied as is. On failure the reason goes to /dev/termination-log, where the
kubelet picks it up, so the pod status — and so the deployment's status — says why
(podstatus.py: stage "model download"). Uses no Kubernetes API.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

TERMINATION_LOG = Path("/dev/termination-log")
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")


class DownloadError(Exception):
    pass


# Everything fetch() raises for a URI it cannot fetch, verify or unpack (not only
# DownloadError: a corrupt or escaping archive raises tarfile's or zipfile's own errors).
FETCH_ERRORS = (DownloadError, OSError, tarfile.TarError, zipfile.BadZipFile)


def _split_digest(uri: str) -> tuple[str, str | None]:
    base, _, fragment = uri.partition("#")
    return base, fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else None


def _fetch(uri: str, into: Path) -> Path:
    """The file behind `uri`, in `into` (or the local folder itself)."""
    if uri.startswith("file://") or uri.startswith("/"):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise DownloadError(f"{path} does not exist in the image")
        return path
    if not uri.startswith(("http://", "https://")):
        raise DownloadError(f"unsupported URI {uri!r} (use http(s):// or file://)")
    target = into / (Path(uri.split("?")[0]).name or "download")
    try:
        with urllib.request.urlopen(uri, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        raise DownloadError(f"cannot download {uri}: {exc}") from None
    return target


def _verify(path: Path, expected: str | None, uri: str) -> None:
    if expected is None or path.is_dir():
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DownloadError(f"sha256 mismatch for {uri}: expected {expected}, got {digest.hexdigest()}")


def _place(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    name = source.name.lower()
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True)
    elif name.endswith(".zip"):
        with zipfile.ZipFile(source) as archive:
            archive.extractall(dest)
    elif name.endswith(_ARCHIVES):
        with tarfile.open(source) as archive:
            _extract_tar(archive, dest)
    else:
        shutil.copy2(source, dest / source.name)


def _extract_tar(archive: tarfile.TarFile, dest: Path) -> None:
    """Unpack without letting a member land outside `dest`. Python 3.11.4+ has the "data"
    extraction filter for this; older 3.11 releases (Debian 12's python3 is 3.11.2) do
    not, and there the same rules are applied by hand, but stricter on links: only plain
    files and directories, leading slashes stripped, nothing resolving outside `dest`."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(dest, filter="data")
        return
    root = dest.resolve()
    members = archive.getmembers()
    for member in members:
        if not (member.isfile() or member.isdir()):
            raise DownloadError(f"archive member {member.name!r} is not a plain file or directory")
        name = member.name.lstrip("/")  # as the filter does: an absolute name lands inside
        target = (root / name).resolve()
        if target != root and root not in target.parents:
            raise DownloadError(f"archive member {member.name!r} would land outside the model directory")
        member.name = name
        member.mode &= 0o755  # no setuid/setgid/sticky, no group/other write
        if member.isfile():
            member.mode |= 0o600  # the owner can read and write what it unpacked
        # Owned by whoever unpacks (root in an init container), not by the archive's ids.
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    archive.extractall(dest, members=members)


def fetch(uri: str, dest: Path) -> None:
    base, expected = _split_digest(uri)
    with tempfile.TemporaryDirectory() as scratch:
        path = _fetch(base, Path(scratch))
        _verify(path, expected, base)
        _place(path, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.backends.kubernetes.downloading")
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--code", default=None)
    parser.add_argument("--termination-log", type=Path, default=TERMINATION_LOG)
    args = parser.parse_args(argv)
    try:
        for what, uri in (("model", args.model), ("code", args.code)):
            if uri:
                fetch(uri, args.dest / what)
                print(f"{what}: {uri} -> {args.dest / what}", flush=True)
    except FETCH_ERRORS as exc:
        message = f"{exc}"
        print(message, file=sys.stderr, flush=True)
        try:
            args.termination_log.write_text(message)
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
