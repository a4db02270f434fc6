"""A test model whose behaviour is set per deployment by environment variables.

LABEL          returned in every answer, so a test sees which deployment answered
RECORD_FILE    every request body is appended here as one line (mirror checks)
SLEEP_S        seconds to sleep in run()
FAIL           "1": every run() raises
INIT_FAIL      "1": init() raises ValueError("bad model")
INIT_SLEEP_S   seconds init() takes
INIT_EXIT      exit code init() leaves the process with (a crash before ready)
A body containing "please-fail" makes run() raise ValueError.
"""

import json
import os
import time

LABEL = None


def init():
    global LABEL
    LABEL = os.environ.get("LABEL", "unlabelled")
    time.sleep(float(os.environ.get("INIT_SLEEP_S", "0") or 0))
    if os.environ.get("INIT_EXIT"):
        os._exit(int(os.environ["INIT_EXIT"]))
    if os.environ.get("INIT_FAIL") == "1":
        raise ValueError("bad model")


def run(raw_data):
    record = os.environ.get("RECORD_FILE")
    if record:
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(raw_data.replace("\n", " ") + "\n")
    sleep_s = float(os.environ.get("SLEEP_S", "0") or 0)
    if sleep_s:
        time.sleep(sleep_s)
    if os.environ.get("FAIL") == "1" or "please-fail" in raw_data:
        raise ValueError("asked to fail")
    return {"label": LABEL, "pid": os.getpid(), "echo": json.loads(raw_data) if raw_data else None}
