"""What routes get injected: the daemon, and request bodies read with a limit."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from pyslicer.api.errors import describe_validation
from pyslicer.daemon import Daemon
from pyslicer.errors import InvalidArgument

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BODY = 1024 * 1024


def daemon_of(request: Request) -> Daemon:
    daemon: Daemon = request.app.state.daemon
    return daemon


DaemonDep = Annotated[Daemon, Depends(daemon_of)]


async def json_body(request: Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The request's JSON object, whatever its content type says (curl -d sends a form type); an empty
    body is an empty object. Raises InvalidArgument for anything else."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidArgument(f"request body is larger than {limit} bytes", code="body_too_large")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidArgument("request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", code="invalid_json")
    return data


def json_body_of(model: type[M]) -> Any:
    """A dependency giving the body as ``model``; 400 naming the field when it does not fit."""

    async def parse(request: Request) -> M:
        try:
            return model.model_validate(await json_body(request))
        except ValidationError as exc:
            raise describe_validation([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None

    return Depends(parse)


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the (optional) JSON body of a route that reads it itself."""
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}
            },
        }
    }
