"""A minimal Python Lambda runtime: the loop awslambdaric runs, in the standard library only.

Run as ``python -S -P bench/python_runtime.py`` with ``_HANDLER=module.function`` and
``AWS_LAMBDA_RUNTIME_API=host:port``, as Lambda starts its Python runtime: import the handler's
module (the init phase), then forever fetch the next event, call the handler and post its result,
or the error as Lambda reports it. Both Python contenders run under this same loop, so neither
pays for anything the other does not. (awslambdaric is not on the EFS tree, and it is no part of
what differs between the contenders.)
"""

import http.client
import importlib
import json
import os


def main() -> None:
    module, function = os.environ["_HANDLER"].rsplit(".", 1)
    handler = getattr(importlib.import_module(module), function)
    api = http.client.HTTPConnection(os.environ["AWS_LAMBDA_RUNTIME_API"])
    while True:
        api.request("GET", "/2018-06-01/runtime/invocation/next")
        reply = api.getresponse()
        event = reply.read()
        request_id = reply.getheader("Lambda-Runtime-Aws-Request-Id")
        try:
            body, outcome = json.dumps(handler(json.loads(event), None)), "response"
        except Exception as err:  # reported to Lambda as the function error
            body = json.dumps({"errorType": type(err).__name__, "errorMessage": str(err)})
            outcome = "error"
        api.request("POST", f"/2018-06-01/runtime/invocation/{request_id}/{outcome}", body)
        api.getresponse().read()


if __name__ == "__main__":
    main()
