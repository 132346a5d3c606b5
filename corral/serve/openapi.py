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
    404: "a model that is neither the served one nor a loaded LoRA adapter",
    413: "body over --max-request-body-bytes",
    503: "overloaded (Retry-After), engine not running, or shutting down",
}
_SSE = (
    "with stream: true, server-sent events: one `data: <JSON chunk>` per delta (or an error "
    "object, if the request fails after the answer has started), then `data: [DONE]`"
)


def errors(
    *statuses: int, descriptions: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The OpenAI-style error object under each status (descriptions: a route's own, in place
    of the common ones)."""
    described = {**_ERRORS, **(descriptions or {})}
    return {
        status: {"model": ErrorResponse, "description": described[status]} for status in statuses
    }


def _event(chunk_model: type[BaseModel]) -> dict[str, Any]:
    """The schema of one server-sent event (OpenAPI 3.1: `schema` describes each event)."""
    chunk = {"$ref": _REF.format(model=chunk_model.__name__)}
    error = {"$ref": _REF.format(model=ErrorResponse.__name__)}
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [chunk, error]},
    }
    data = {"oneOf": [{"const": "[DONE]"}, json_data]}
    return {"type": "object", "required": ["data"], "properties": {"data": data}}


def post_json(
    request_model: type[BaseModel],
    response_model: type[BaseModel],
    *,
    chunk_model: type[BaseModel] | None = None,
    error_descriptions: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Route arguments documenting a POST whose body is request_model and whose answer is
    response_model, or with stream: true server-sent events of chunk_model (when given; it must
    be among install_openapi's response_models); error_descriptions: the route's own meaning of
    a status."""
    responses = errors(400, 401, 404, 413, 503, descriptions=error_descriptions)
    if chunk_model is not None:
        responses[200] = {
            "description": _SSE,
            "content": {"text/event-stream": {"schema": _event(chunk_model)}},
        }
    schema = {"$ref": _REF.format(model=request_model.__name__)}
    return {
        "response_model": response_model,
        "responses": responses,
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
    }


def install_openapi(
    app: FastAPI,
    request_models: list[type[BaseModel]],
    response_models: list[type[BaseModel]],
    *,
    has_api_keys: bool,
) -> None:
    """app.openapi() adds the schemas of request_models (as validated) and of response_models
    that no route names (as serialized: stream chunks) to the components and, with API keys,
    the bearer scheme to every operation outside OPEN_PATHS."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        models = [(model, "validation") for model in request_models]
        models += [(model, "serialization") for model in response_models]
        _, definitions = models_json_schema(models, ref_template=_REF)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in definitions.get("$defs", {}).items():
            # A response model FastAPI already wrote (it leaves out serialized defaults).
            existing = components.setdefault(name, definition)
            if existing.get("properties", {}).keys() != definition.get("properties", {}).keys():
                raise RuntimeError(f"two schemas named {name!r} in /openapi.json")
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
