"""Arguments the CLI refuses itself, before any request, in the words of its flags."""

from __future__ import annotations

import pytest

from serving.cli import _weights
from serving.client import CliError


def test_a_deployment_given_twice_in_a_split_is_named():
    with pytest.raises(CliError) as refused:
        _weights("d1=100 d1=0", "--traffic")
    assert refused.value.exit_code == 2
    assert str(refused.value) == "--traffic: deployment 'd1' is given twice (d1=100 and d1=0)"
    with pytest.raises(CliError, match="deployment 'green' is given twice"):
        _weights("green=10,blue=90,green=10", "--mirror-traffic")


def test_a_malformed_pair_is_still_shown_as_given():
    with pytest.raises(CliError, match="expected \"name=percent ...\", got 'd1'"):
        _weights("d1", "--traffic")
    assert _weights("blue=90, green=10", "--traffic") == {"blue": 90, "green": 10}

