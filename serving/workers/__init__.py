"""`scoregate serve --workers N`: N router processes on one port, one control plane.

The main process keeps everything that must exist once — store, controller, replicas,
admin port, batch jobs, the routing table — and starts N worker processes that each run
a RouterApp listening on the same port (SO_REUSEPORT: the kernel spreads new
connections over them). See docs/architecture.md ("Worker processes").

    channel.py   framed messages between the main process and a worker
    worker.py    the worker process: its RouterApp, fed and read over the channel
    pool.py      the main side: starts, feeds, watches and restarts the workers, and
                 answers the control plane's questions with the sum of their answers
    metrics.py   the workers' metrics, merged under a `worker` label
    batch_proxy.py  batch job routes of the scoring port, passed on to the main process
"""

from .pool import WorkerPool, WorkerSettings

__all__ = ["WorkerPool", "WorkerSettings"]
