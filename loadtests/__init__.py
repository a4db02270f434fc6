"""The scoregate load-testing harness (see `python -m loadtests --help`).

Entry points: loadtests.cli (build_parser, run_cli), loadtests.runner (RunSpec,
run, run_async) and loadtests.results (RunResult).  Submodules are imported
on demand so that `import loadtests` stays cheap for the gateway's CLI.
"""
