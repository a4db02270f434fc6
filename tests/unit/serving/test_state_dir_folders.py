"""The folders of the state dir are checked once at start (serving.statedir.check_folders);
the e2e tests (tests/e2e/test_state_dir.py) show the line `serve` refuses with."""

from __future__ import annotations

import os

import pytest

from serving.statedir import StateDir, StateDirUnusable


def test_a_folder_this_user_cannot_write_is_named(tmp_path, monkeypatch):
    """As root every folder is writable, so os.access stands in for a read-only one."""
    (tmp_path / "logs").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real(path, mode) and os.fspath(path) != str(tmp_path / "logs"))
    with pytest.raises(StateDirUnusable, match=f"^{tmp_path / 'logs'} is not writable by this user"):
        StateDir(tmp_path).check_folders()


def test_missing_folders_and_a_link_to_a_folder_are_fine(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "logs").symlink_to(tmp_path / "elsewhere")
    StateDir(tmp_path).check_folders()


def test_a_dangling_link_is_not_a_directory(tmp_path):
    (tmp_path / "tls").symlink_to(tmp_path / "gone")
    with pytest.raises(StateDirUnusable, match="tls is not a directory"):
        StateDir(tmp_path).check_folders()
