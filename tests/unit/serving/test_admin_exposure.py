"""The admin port's announced address is the one bound, and binding it beyond loopback
is warned about once (it is plain HTTP; /metrics needs no token)."""

from __future__ import annotations

import logging

from serving.embedded import _beyond_loopback, _listening_urls, _warn_if_admin_exposed


def test_the_urls_are_those_of_the_bound_sockets():
    assert _listening_urls("http", [("0.0.0.0", 8081)]) == "http://0.0.0.0:8081"
    assert _listening_urls("http", [("::1", 8081, 0, 0), ("127.0.0.1", 8081)]) == \
        "http://[::1]:8081, http://127.0.0.1:8081"


def test_only_loopback_addresses_are_private():
    assert _beyond_loopback([("127.0.0.1", 1), ("127.0.0.2", 1), ("::1", 1, 0, 0)]) == []
    assert _beyond_loopback([("0.0.0.0", 1), ("::", 1, 0, 0), ("10.1.2.3", 1), ("127.0.0.1", 1)]) == \
        ["0.0.0.0", "::", "10.1.2.3"]
    assert _beyond_loopback([("fe80::1%eth0", 1, 0, 2)]) == ["fe80::1%eth0"]


def test_one_warning_for_an_exposed_admin_port_none_for_loopback(caplog):
    caplog.set_level(logging.INFO, logger="scoregate")
    _warn_if_admin_exposed([("127.0.0.1", 8081)])
    assert not caplog.records
    _warn_if_admin_exposed([("0.0.0.0", 8081)])
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "http://0.0.0.0:8081" in record.getMessage()
    assert "/metrics" in record.getMessage()
