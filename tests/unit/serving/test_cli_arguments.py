"""Arguments the CLI refuses itself, before any request, in the words of its flags."""

from __future__ import annotations

import pytest

from serving.cli import _weights, main
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


@pytest.mark.parametrize("given", ["25h", "0s", "0", "86401", "24h1s"])
def test_a_token_lifetime_out_of_bounds_is_refused_in_the_flags_syntax(given, tmp_path, capsys):
    """Refused by the parser: no gateway is asked (none runs in tmp_path)."""
    with pytest.raises(SystemExit) as refused:
        main(["endpoint", "get-token", "-n", "ep1", "--lifetime", given, "--state-dir", str(tmp_path)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --lifetime: must be from 1s to 24h, got '{given}'" in err
    assert "lifetime_s" not in err


def test_a_token_lifetime_in_bounds_is_taken():
    from serving.cli import build_parser

    for given, seconds in (("24h", 86400.0), ("1s", 1.0), ("10m", 600.0), ("90", 90.0)):
        args = build_parser().parse_args(["endpoint", "get-token", "-n", "ep1", "--lifetime", given])
        assert args.lifetime == seconds
