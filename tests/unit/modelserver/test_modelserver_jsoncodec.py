"""The model server's JSON: a big integer takes the slow path, and is written as orjson writes the rest."""

import datetime
import json

import numpy as np
import pytest

from serving.modelserver import jsoncodec


def test_a_result_with_a_big_integer_is_written_like_the_fast_path_otherwise():
    value = {"big": 2**64, "nan": float("nan"), "when": datetime.date(2024, 1, 2),
             "array": np.array([1, 2], dtype=np.int64), "scalar": np.float32(0.5), 1: ("é", None)}
    written = jsoncodec.dumps(value)
    assert json.loads(written) == {"big": 2**64, "nan": None, "when": "2024-01-02", "array": [1, 2],
                                   "scalar": 0.5, "1": ["é", None]}
    assert b"\\u" not in written and b" " not in written  # UTF-8 and compact, as orjson writes


def test_without_a_big_integer_orjson_writes_it():
    assert jsoncodec.dumps({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'


def test_what_neither_can_write_is_a_type_error():
    with pytest.raises(TypeError):
        jsoncodec.dumps({"big": 2**64, "other": object()})


@pytest.mark.parametrize("text, value", [
    ('{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
    ('{"id": "1234567890123456789012", "x": 1.5}', {"id": "1234567890123456789012", "x": 1.5}),
    ("[9223372036854775807]", [2**63 - 1]),
])
def test_long_numbers_are_read_exactly(text, value):
    assert jsoncodec.loads(text) == value  # an int compares equal to a float only when exact


@pytest.mark.parametrize("text", ["[NaN]", "[12345678901234567890, Infinity]", "not json"])
def test_what_is_not_json_is_a_value_error_on_either_path(text):
    with pytest.raises(ValueError):
        jsoncodec.loads(text)
