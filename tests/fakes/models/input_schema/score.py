"""An Azure ML scoring script with inference-schema's decorators, as Azure ML's samples
write them: run() takes the JSON body's fields by name, `scale` with a default."""

from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", StandardPythonParameterType([[1.0, 2.0]]))
@input_schema("scale", StandardPythonParameterType(1.0))
@output_schema(StandardPythonParameterType({"sums": [3.0]}))
def run(data, scale=2.0, request_headers=None):
    return {"sums": [sum(row) * scale for row in data],
            "request_id": (request_headers or {}).get("X-Request-Id")}
