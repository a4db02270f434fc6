"""The router's certificate from a kubernetes.io/tls Secret: loaded at start, rotated when
the Secret changes (new handshakes see the new certificate), a bad one refused."""

from __future__ import annotations

import asyncio
import base64
import ssl

import aiohttp
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from serving.backends.kubernetes.router_running import KubernetesRouter
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import SYSTEM, router_settings
from tls import TLSConfigError, ensure_dev_certificates

TLS_SECRETS = ("", "v1", "secrets")


def certificate_files(directory):
    paths = ensure_dev_certificates(directory)
    return paths.cert.read_bytes(), paths.key.read_bytes()


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificates(pem)[0].serial_number


def put_tls_secret(apiserver, cert: bytes, key: bytes) -> None:
    data = {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}
    if apiserver.update(TLS_SECRETS, SYSTEM, "scoregate-router-tls", lambda s: s.__setitem__("data", data)) is None:
        apiserver.create(TLS_SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                       "metadata": {"name": "scoregate-router-tls", "namespace": SYSTEM},
                                       "data": data})


async def served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_certificate_rotates_with_the_secret(apiserver, kubeconfig, tmp_path):
    first, second = certificate_files(tmp_path / "first"), certificate_files(tmp_path / "second")
    put_tls_secret(apiserver, *first)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False,
                                              tls_secret="scoregate-router-tls"))
    await router.start()
    try:
        assert await served_serial(router.port) == serial_of(first[0])
        put_tls_secret(apiserver, *second)
        await eventually(lambda: router.certificate.reloads == ["reloaded"])
        assert await served_serial(router.port) == serial_of(second[0])

        put_tls_secret(apiserver, second[0], first[1])  # the key does not match the certificate
        await eventually(lambda: router.certificate.reloads == ["reloaded", "refused"])
        assert await served_serial(router.port) == serial_of(second[0])  # the good one stays

        # What an operator's alerts read on the router's /metrics: the served certificate's
        # expiry, the refused reload, the handshakes.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{router.admin_port}/metrics") as answer:
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for family in text_string_to_metric_families(await answer.text())
                           for s in family.samples}
        not_after = x509.load_pem_x509_certificates(second[0])[0].not_valid_after_utc.timestamp()
        assert samples[("scoregate_tls_certificate_expiry_timestamp_seconds", (("name", "default"),))] == not_after
        assert samples[("scoregate_tls_certificate_reload_failing", (("name", "default"),))] == 1
        handshakes = [v for (name, labels), v in samples.items() if name == "scoregate_tls_handshakes_total"
                      and dict(labels)["outcome"] == "ok"]
        assert sum(handshakes) == 3  # the three served_serial() connections
    finally:
        await router.close()


async def test_missing_secret_is_a_clear_startup_error(apiserver, kubeconfig, tmp_path):
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False,
                                              tls_secret=f"{SYSTEM}/nope"))
    with pytest.raises(TLSConfigError, match="scoregate-system/nope does not exist"):
        await router.start()
    await router.close()


async def test_without_a_secret_a_development_certificate(apiserver, kubeconfig, tmp_path):
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        paths = ensure_dev_certificates(tmp_path / "tls-router-a")
        assert await served_serial(router.port) == serial_of(paths.cert.read_bytes())
    finally:
        await router.close()
