"""`serve --host ::1 --admin-host ::1`: the URLs the gateway hands out (gateway.json, the
endpoints' scoring_uri) are URLs a client can use, with the IPv6 address in brackets."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request


def test_urls_of_a_gateway_on_an_ipv6_address_have_the_address_in_brackets(make_gateway, tmp_path):
    """They were written as https://::1:8443, which curl and urllib.parse cannot use."""
    (tmp_path / "endpoint.yml").write_text("name: echo\nauth_mode: key\n")
    gw = make_gateway([str(tmp_path / "endpoint.yml")], ["--host", "::1", "--admin-host", "::1"])
    scoring, admin = urllib.parse.urlsplit(gw.info.scoring_url), urllib.parse.urlsplit(gw.info.admin_url)
    assert (scoring.hostname, admin.hostname) == ("::1", "::1")
    assert gw.info.scoring_url == f"https://[::1]:{scoring.port}" and gw.info.admin_url == f"http://[::1]:{admin.port}"
    done = gw.cli("endpoint", "show", "--name", "echo")
    assert done.returncode == 0, done.stderr
    uri = json.loads(done.stdout)["scoring_uri"]
    assert uri == f"https://[::1]:{scoring.port}/api/v1/endpoint/echo/score"
    context = ssl.create_default_context(cafile=gw.info.ca_cert)
    try:
        urllib.request.urlopen(urllib.request.Request(uri, data=b"{}"), context=context, timeout=30)
    except urllib.error.HTTPError as exc:
        assert exc.code in (401, 404)  # the gateway answered over TLS (no key, no deployment)
    else:
        raise AssertionError("scored without a key")
