"""Stand-in for azureml-inference-server-http's aml_request module (not installed here).

Only what the model server can see of it: @rawhttp returns run() unchanged and
records, in this module's `_rawHttpRequested`, that it was used.
"""

_rawHttpRequested = False


def rawhttp(func):
    global _rawHttpRequested
    _rawHttpRequested = True
    return func
