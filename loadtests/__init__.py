"""The scoregate load-testing harness (see `python -m loadtests --help`).

Entry points: loadtests.cli (build_parser, run_cli), loadtests.runner (RunSpec,
run, run_async), loadtests.results (RunResult), loadtests.targets (--url,
--endpoint, --replica), loadtests.scenarios and loadtests.bench.  Submodules
are imported on demand so that `import loadtests` stays cheap for the
gateway's CLI; loadtests imports nothing of the project but tls and reaches
the gateway over HTTP only (loadtests.admin).
"""
