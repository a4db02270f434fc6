"""Iris batch scoring script: Azure ML's batch contract, standard library only.

init() runs once per worker process; run(mini_batch) gets either a list of file paths
(uri_folder / uri_file input: each file holds one flower as JSON) or a list of rows
(inline / tabular input: each row one flower) and returns one result per item: the
predicted species and its probability, as "species probability".
"""

import json
import logging
import math
import os

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
model = None
log = logging.getLogger("iris-batch")


def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json"), encoding="utf-8") as f:
        model = json.load(f)
    log.info("loaded the %s model", model["model"])


def _features(flower):
    """A flower is [4 numbers] or an object with the four feature names. Errors say what is
    wrong, never the values: a job's errors go back to whoever submitted it, and a string
    item is opened as a file (see run())."""
    if isinstance(flower, dict):
        missing = [name for name in FEATURES if name not in flower]
        if missing:
            raise ValueError(f"missing features: {', '.join(missing)}")
        flower = [flower[name] for name in FEATURES]
    if not isinstance(flower, list) or len(flower) != 4:
        what = f"a list of {len(flower)} values" if isinstance(flower, list) else f"a {type(flower).__name__}"
        raise ValueError(f"expected 4 features ({', '.join(FEATURES)}), got {what}")
    try:
        return [float(v) for v in flower]
    except (TypeError, ValueError):
        raise ValueError("the features must be numbers") from None


def _classify(values):
    xs = [(v - m) / s for v, m, s in zip(values, model["mean"], model["std"])]
    logits = [b + sum(w * x for w, x in zip(weights, xs)) for weights, b in zip(model["weights"], model["bias"])]
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    best = max(range(len(exps)), key=exps.__getitem__)
    return f"{model['classes'][best]} {exps[best] / sum(exps):.4f}"


def run(mini_batch):
    results = []
    for item in mini_batch:
        # A file input's items are paths; so is any string here, even one sent inline
        # (docs/batch.md): fine for this script, whose errors never show what it read.
        if isinstance(item, str):
            with open(item, encoding="utf-8") as f:
                item = json.load(f)
        results.append(_classify(_features(item)))
    return results
