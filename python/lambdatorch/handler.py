"""The ready-made Python Lambda handler: ``lambdatorch.handler.lambda_handler``.

Importing this module, which Lambda does during the init phase, loads libtorch and the models of
``LAMBDATORCH_PRELOAD``, so the first request pays for neither. Each invocation is one call into
the Rust service core that the native ``bootstrap`` runs too: there is no event logic here. The
core logs each request as one JSON line on stderr, with the context's request id, exactly as the
native handler does. Failures of direct invokes propagate as lambdatorch exceptions, whose class
name Lambda reports as the ``errorType``; HTTP-style events get proxy responses with the error's
status code.
"""

from __future__ import annotations

from typing import Any

from ._libtorch import import_core

_core = import_core()
_core.preload()


def lambda_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point: the event in, the response (or proxy response) out.

    The request id of Lambda's context goes into the request's log line.
    """
    return _core.handle(event, getattr(context, "aws_request_id", None))
