"""`scoregate tls dev-cert` and the development certificate of `serve`: a name no certificate
can hold, or a folder that cannot be written, is one line and exit code 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography import x509

from serving.cli import main
from tests.support.gateway import REPO, _env


@pytest.mark.parametrize("hostname", ["bad name!", "a..b", "under_score/x"])
def test_a_hostname_that_is_no_dns_name_nor_address_is_refused(tmp_path, capsys, hostname):
    """'bad name!' used to become a DNS name in the certificate's subjectAltName."""
    assert main(["tls", "dev-cert", "--hostname", hostname, "--out", str(tmp_path / "tls")]) == 2
    err = capsys.readouterr().err
    assert f"error: --hostname: invalid hostname '{hostname}': not a DNS name nor an IP address" in err
    assert not (tmp_path / "tls" / "server.pem").exists()


def test_names_and_addresses_still_make_a_certificate(tmp_path, capsys):
    names = ["gw.lab", "*.scoring.lab", "10.0.0.5", "[::1]", "bücher.example"]
    assert main(["tls", "dev-cert", *(f"--hostname={n}" for n in names), "--out", str(tmp_path)]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.lab", "*.scoring.lab", "xn--bcher-kva.example"]


def test_an_out_folder_that_cannot_be_made_is_named(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["tls", "dev-cert", "--out", str(tmp_path / "a-file" / "tls")]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {tmp_path / 'a-file' / 'tls'}: cannot write the certificates: Not a directory" in err


def test_serve_with_a_domain_no_certificate_can_hold_does_not_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(tmp_path / "state"),
                           "--port", "0", "--admin-port", "0", "--domain", "bad domain!"],
                          capture_output=True, text=True, cwd=str(REPO), env=_env(), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot make the development certificate: invalid hostname 'bad domain!'" in done.stderr
    assert "Traceback" not in done.stderr
