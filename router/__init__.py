"""scoregate's data plane: accept, authenticate, route, admit, balance, forward, record.

What the control plane (serving/) may import is re-exported here and nothing else.
"""

from .app import RouterApp, RouterSettings
from .auth_throttle import AuthThrottle, AuthThrottled
from .pipeline import BodySettings
from .routing_table import (
    DeploymentRoute,
    EndpointRoute,
    Replica,
    RequestSettings,
    RoutingTable,
    RoutingTableHolder,
)

__all__ = [
    "AuthThrottle",
    "AuthThrottled",
    "BodySettings",
    "DeploymentRoute",
    "EndpointRoute",
    "Replica",
    "RequestSettings",
    "RouterApp",
    "RouterSettings",
    "RoutingTable",
    "RoutingTableHolder",
]
