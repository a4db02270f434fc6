"""A test model whose behaviour is set per deployment by environment variables.

LABEL          returned in every answer, so a test sees which deployment answered
RECORD_FILE    every request body is appended here as one line (mirror checks)
SLEEP_S        seconds to sleep in run()
FAIL           "1": every run() raises
A body containing "please-fail" makes run() raise ValueError.
"""

import json
import os
import time

LABEL = None


def init():
    global LABEL
    LABEL = os.environ.get("LABEL", "unlabelled")


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
