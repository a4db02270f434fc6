"""Batch endpoints: durable job submission, mini-batch scoring in worker processes.

Entry points for the composition root and the CLI (kept import-light on purpose: the
worker child process imports this package too):
    serving.batch.manifests  is_batch(), parse_batch(), parse_batch_all()
    serving.batch.service    BatchService (routes for the scoring port, admin routes)
    serving.batch.cli        register() / dispatch() for `batch` and `job` verbs
See docs/batch.md for the contract and the durability design.
"""
