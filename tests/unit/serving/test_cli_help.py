"""`scoregate endpoint -h` and `scoregate deployment -h` list every action the verb has."""

from __future__ import annotations

import re

import pytest

from serving.cli import main

ACTIONS = {
    "endpoint": ("list", "show", "update", "delete", "get-credentials", "regenerate-keys", "get-token", "invoke"),
    "deployment": ("list", "show", "logs", "get-logs", "delete", "scale"),
}


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "-h"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(ACTIONS))
def test_the_help_of_a_verb_lists_each_action_and_what_it_does(capsys, verb):
    """Only get-token and update were listed; show, invoke, logs... were missing."""
    text = help_of(capsys, verb)
    listed = re.findall(r"^    ([a-z-]+)(?: \(([a-z-]+)\))?\n?\s+(\S.*)$", text, re.MULTILINE)
    names = {name for entry in listed for name in entry[:2] if name}
    assert names == set(ACTIONS[verb]), text


def test_get_logs_is_az_mls_name_for_deployment_logs(capsys):
    usage = help_of(capsys, "deployment", "get-logs")
    assert "--endpoint-name" in usage and "--lines" in usage
