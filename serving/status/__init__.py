"""The live status of a gateway: snapshot, status page, and `GET /api/v1/status`.

Wiring (in the composition root, serving.embedded):

    status = GatewayStatus(store, controller, backend, admin_token=token, router=router,
                           autoscaling=autoscaling, batch=batch)
    page = StatusPage(status.snapshot, admin_token=token)
    admin_app.add_routes(... + status.api_routes() + page.routes())
    await status.start()   # samples the metrics once a second for the charts
    ...
    status.scoring_url = scoring_url   # once the port is known
    await status.close()

See docs/observability.md for what the page shows and how signing in works.
"""

from .live import LiveSeries
from .page import StatusPage
from .service import GatewayStatus
from .snapshot import assemble, build_snapshot

__all__ = ["GatewayStatus", "LiveSeries", "StatusPage", "assemble", "build_snapshot"]
