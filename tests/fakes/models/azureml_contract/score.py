"""A scoring script written for azureml-inference-server-http, for the model server's tests.

run() takes `request_headers` as Azure ML's server passes it. What it does depends on the body:
"headers"         return the request_headers it was given
"hold:NAME"       log "holding NAME", then wait (10 s at most) until $SIGNAL_DIR/NAME exists
"mark:NAME"       append NAME to $SIGNAL_DIR/ran, then answer {"ran": NAME}
"unprintable"     raise an exception whose str() itself raises
"same-response"   return one aiohttp Response object, the same one every time
"""

import os
import sys
import time

from aiohttp import web

SIGNAL_DIR = os.environ.get("SIGNAL_DIR", ".")
SHARED_RESPONSE = web.Response(text="shared")


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot be printed")


def init():
    pass


def run(raw_data, request_headers):
    if raw_data == "headers":
        return request_headers
    if raw_data.startswith("hold:"):
        name = raw_data[5:]
        print(f"holding {name}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(SIGNAL_DIR, name)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"held": name}
    if raw_data.startswith("mark:"):
        with open(os.path.join(SIGNAL_DIR, "ran"), "a") as handle:
            handle.write(raw_data[5:] + "\n")
        return {"ran": raw_data[5:]}
    if raw_data == "unprintable":
        raise Unprintable()
    if raw_data == "same-response":
        return SHARED_RESPONSE
    return {"echo": raw_data}
