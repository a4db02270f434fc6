"""scoregate on Kubernetes: the only package that imports kubernetes_asyncio.

- api.py         KubeApi: the typed kubernetes-asyncio APIs, raw JSON in and out
- watching.py    ObjectCache: list-then-watch mirrors (resourceVersion, 410 Gone → re-list)
- names.py       object names and labels
- translation.py custom resources (camelCase) ⇄ serving.resources, validated
- workloads.py   apps/v1 Deployment + Service of a deployment version (pure)
- podstatus.py   pod status → state, stage, reason (pure)
- replicas.py    versions + pods → ReplicaViews (pure)
- backend.py     KubernetesBackend (the Backend protocol)
- writing.py     VersionWriter: targets → Deployments and Services (409, back-off)
- store.py       KubernetesStore (the Store protocol, on custom resources)
- keys.py        SecretKeeper: endpoint keys and named secrets in Secrets
- signing_key.py SigningKeyKeeper: the controller makes the aml_token signing key Secret
- token_minting.py `endpoint get-token --backend kubernetes`: a token from that key
- status.py      DeploymentStatusReporter: the status subresource of the custom resources
- leasing.py     LeaseElector: coordination.k8s.io Lease leader election
- running.py     run_controller(): the `scoregate controller --backend kubernetes` process
- utilization.py the autoscaler's signal: the routers' summed utilization from the shares ConfigMap
- discovery.py   ClusterDiscovery: the router's view (CRs, keys, EndpointSlices)
- routing.py     RouterTables: that view + this router's slot shares → its RoutingTable
- shares.py      slot shares across routers: targets and the safe hand-over (pure)
- coordination.py reports in Leases, the elected coordinator, the shares ConfigMap
- certificates.py the router's certificate from a kubernetes.io/tls Secret, rotated
- router_running.py run_router(): the `scoregate router --backend kubernetes` process
- batch_translation.py BatchEndpoint / BatchDeployment custom resources → serving.batch resources (pure)
- batch_sync.py  BatchResources: those custom resources → a BatchService (keys Secrets, status)
- batch_running.py run_batch(): the `scoregate batch-runner --backend kubernetes` process
- downloading.py the init container that fetches model and code (no Kubernetes API)
See docs/kubernetes.md.
"""

from .api import KubeApi, load_api_client
from .backend import KubernetesBackend
from .translation import CustomResourceError, InstanceTypeSpec
from .workloads import Placement, StaticPlacement, WorkloadSettings

__all__ = [
    "CustomResourceError",
    "InstanceTypeSpec",
    "KubeApi",
    "KubernetesBackend",
    "Placement",
    "StaticPlacement",
    "WorkloadSettings",
    "load_api_client",
]
