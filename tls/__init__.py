"""Certificates and TLS contexts for scoregate.

This package stands alone (it imports nothing from router or serving) so both the data
plane and the control plane can use it, and the CLI can make certificates without
starting either.
"""

from .devcert import DevCertPaths, ensure_dev_certificates, write_dev_certificates
from .errors import TLSConfigError
from .policy import client_context, server_context

__all__ = [
    "DevCertPaths",
    "TLSConfigError",
    "client_context",
    "ensure_dev_certificates",
    "server_context",
    "write_dev_certificates",
]
