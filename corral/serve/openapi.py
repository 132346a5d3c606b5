"""/openapi.json from the models that validate and serialize: request bodies (parsed by hand, so
that the body-size limit and the JSON checks come first: corral.serve.security) are attached to
their routes with openapi_extra, their schemas added to the components; responses, errors and
the bearer scheme (when API keys are set) are declared per route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from corral.serve.responses import ErrorResponse
from corral.serve.security import OPEN_PATHS

_REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "bad input: the message names the field, the value and the limit",
    401: "missing or invalid API key (only when the server has keys)",
    404: "another model than the served one",
    413: "body over --max-request-body-bytes",
    503: "overloaded (Retry-After), engine not running, or shutting down",
}
_SSE = (
    "with stream: true, server-sent events: one `data: <JSON chunk>` per delta (the chunk has "
    "the non-streaming response's shape, or an error object), then `data: [DONE]`"
)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAI-style error object under each status."""
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


def post_json(
    request_model: type[BaseModel], response_model: type[BaseModel], *, streams: bool = False
) -> dict[str, Any]:
    """Route arguments documenting a POST whose body is request_model and whose answer is
    response_model (or, if it streams, server-sent events)."""
    responses = errors(400, 401, 404, 413, 503)
    if streams:
        responses[200] = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}
        responses[200]["description"] = _SSE
    schema = {"$ref": _REF.format(model=request_model.__name__)}
    return {
        "response_model": response_model,
        "responses": responses,
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
    }


def install_openapi(
    app: FastAPI, request_models: list[type[BaseModel]], *, has_api_keys: bool
) -> None:
    """app.openapi() adds request_models' schemas (validation mode) to the components and, with
    API keys, the bearer scheme to every operation outside OPEN_PATHS."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in request_models], ref_template=_REF
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in definitions.get("$defs", {}).items():
            if components.get(name, definition) != definition:
                raise RuntimeError(f"two schemas named {name!r} in /openapi.json")
            components[name] = definition
        if has_api_keys:
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path in OPEN_PATHS:
                        operation["responses"].pop("401", None)
                    else:
                        operation["security"] = [{"bearer": []}]
                        operation["responses"].setdefault("401", _error_entry(401))
        else:
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("401", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error_entry(status: int) -> dict[str, Any]:
    return {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }
