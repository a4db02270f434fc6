"""A scoring script that asks Azure ML's server for the raw request with @rawhttp."""

from azureml_inference_server_http.api.aml_request import rawhttp


def init():
    pass


@rawhttp
def run(request):
    return {"method": request.method}
