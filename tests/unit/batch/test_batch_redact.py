"""Worker errors as key holders read them: no server path of a data root (runner.redact_paths)."""

from __future__ import annotations

from serving.batch.runner import redact_paths


def test_paths_under_a_root_become_relative_to_it(tmp_path):
    real = tmp_path / "real"
    (real / "in").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    roots = (str(link),)  # the gateway was given the link; run() gets resolved paths
    error = f"FileNotFoundError: [Errno 2] No such file or directory: '{real}/in/a.json'"
    assert redact_paths(error, roots) == "FileNotFoundError: [Errno 2] No such file or directory: 'in/a.json'"
    assert redact_paths(f"cannot read {link}/in/b.json or {link}", roots) == "cannot read in/b.json or ."
    assert redact_paths(f"IsADirectoryError: '{real}'", roots) == "IsADirectoryError: '.'"


def test_other_paths_and_look_alikes_are_left(tmp_path):
    roots = (str(tmp_path / "data"),)
    text = f"{tmp_path}/data2/x, {tmp_path}/database, /etc/passwd, {tmp_path}/data.csv"
    assert redact_paths(text, roots) == text
    assert redact_paths("no path here", ()) == "no path here"


def test_the_nearest_of_nested_roots_wins(tmp_path):
    roots = (str(tmp_path / "a"), str(tmp_path / "a" / "b"))
    assert redact_paths(f"{tmp_path}/a/b/c.txt and {tmp_path}/a/x.txt", roots) == "c.txt and x.txt"
