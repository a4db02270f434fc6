"""Certificates and TLS contexts for scoregate.

This package stands alone (it imports nothing from router or serving) so both the data
plane and the control plane can use it, and the CLI can make certificates without
starting either. aiohttp is imported only by tls.redirect.
"""

from .ca import InternalCA, IssuedFiles
from .devcert import DevCertPaths, ensure_dev_certificates, write_dev_certificates
from .errors import TLSConfigError
from .loader import CertificateSource, ServingCertificate
from .metrics import TLSMetrics
from .policy import client_context, mtls_server_context, server_context
from .rotation import ReloadResult, ServerTLS
from .sni import CertificateSet
from .tickets import new_ticket_keys

__all__ = [
    "CertificateSet",
    "CertificateSource",
    "DevCertPaths",
    "InternalCA",
    "IssuedFiles",
    "ReloadResult",
    "ServerTLS",
    "ServingCertificate",
    "TLSConfigError",
    "TLSMetrics",
    "client_context",
    "ensure_dev_certificates",
    "mtls_server_context",
    "new_ticket_keys",
    "server_context",
    "write_dev_certificates",
]
