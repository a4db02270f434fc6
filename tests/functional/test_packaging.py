"""The wheel `pip install .` (and the Dockerfile's build stage) makes holds the whole product.

The suite runs from the checkout (an editable install), where a file left out of the
package data — a status page asset, say — is still found; an installed wheel (the image)
would not have it. This builds the wheel without dependencies and compares its contents
with the files git tracks under the packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.support.gateway import REPO

PACKAGES = ("router", "serving", "tls", "loadtests")


def test_the_wheel_holds_every_file_of_the_packages(tmp_path):
    # Built from the tracked files only, as a clean clone or the image's build stage has
    # them: a checkout's leftover *.egg-info would list files the package data misses.
    source = tmp_path / "src"
    for path in subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO,
                               check=True).stdout.splitlines():
        if (REPO / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, source / path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("scoregate-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout.split()
    assert any(path.endswith(".js") for path in tracked)  # the status page's assets are among them
    missing = [path for path in tracked if path not in inside]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = next(name for name in inside if name.endswith(".dist-info/entry_points.txt"))
    assert "scoregate = serving.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_installs_what_the_cluster_manifests_run():
    """deploy/*.yaml run the image as `controller|router|batch-runner --backend kubernetes`,
    which stop at once without the kubernetes extra: the Dockerfile must build it in."""
    commands = {line.split("[", 1)[1].split(",", 1)[0].strip()
                for path in (REPO / "deploy").glob("*.yaml")
                for line in path.read_text().splitlines() if line.strip().startswith("args: [")}
    assert {"controller", "router", "batch-runner"} <= commands, commands
    builds = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("RUN pip wheel")]
    assert len(builds) == 1 and ".[kubernetes]" in builds[0], builds
