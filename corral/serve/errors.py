"""HTTP errors as OpenAI-style objects: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.engine.async_llm import EngineOverloadedError
from corral.engine.core_client import EngineDeadError
from corral.serve.constraints import RULE_ERROR
from corral.serve.responses import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


class APIError(Exception):
    """An error answered to the client: status, message (naming the field, the value and the
    limit), and optionally the offending parameter, a machine-readable code and headers."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        error_type = _TYPES.get(self.status_code, "server_error")
        info = ErrorInfo(message=self.message, type=error_type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def from_validation_error(error: ValidationError | RequestValidationError) -> APIError:
    """A pydantic error as a 400 naming the field, the problem (with the limit, for a
    corral.serve.constraints rule) and the value received."""
    problems = error.errors()
    first = problems[0] if problems else {}
    # Union members add their type to the path (e.g. prompt, list[int], 3); "body" is FastAPI's.
    loc = [part for part in first.get("loc", ()) if part != "body" and not _is_type_name(part)]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    path = path.removeprefix(".")
    # The request field: the path up to the first list index or map key.
    names = []
    for part in loc:
        if not (isinstance(part, str) and part.isidentifier()):
            break
        names.append(part)
    param = ".".join(names) or None
    if first.get("type") == "extra_forbidden":
        message = f"unrecognized request argument {path!r}"
    elif first.get("type") == "missing":
        message = f"{path}: field required"
    elif first.get("type") == RULE_ERROR:
        message = f"{path or 'body'} {first.get('msg')}"
    else:
        value = first.get("input")
        shown = (
            repr(value) if not isinstance(value, (dict, list)) or len(str(value)) < 80 else "..."
        )
        message = f"{path or 'body'}: {first.get('msg', 'invalid value')} (got {shown})"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return APIError(400, message, param=param)


def _is_type_name(part: object) -> bool:
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "list[str]", "list[int]") or "[" in part
    )


def error_for_exception(error: BaseException) -> APIError:
    """Map an engine exception to the HTTP error the client gets."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValueError):
        field = getattr(error, "field", None)  # a GrammarError names the request field
        return APIError(400, str(error), param=field)
    if isinstance(error, EngineOverloadedError):
        retry = str(max(1, round(error.retry_after_s)))
        return APIError(503, str(error), code="overloaded", headers={"Retry-After": retry})
    if isinstance(error, EngineDeadError):
        return APIError(503, f"the engine is not running: {error}", code="engine_dead")
    logger.exception("unexpected error while serving a request", exc_info=error)
    return APIError(500, f"internal server error: {type(error).__name__}", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own included, leaves as an OpenAI-style object."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return from_validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail) if error.detail else HTTPStatus(error.status_code).phrase
        return APIError(error.status_code, message).response()

    @app.exception_handler(ValueError)
    @app.exception_handler(EngineOverloadedError)
    @app.exception_handler(EngineDeadError)
    async def _engine(_: Request, error: Exception) -> JSONResponse:
        return error_for_exception(error).response()

    @app.exception_handler(Exception)
    async def _other(_: Request, error: Exception) -> JSONResponse:
        return error_for_exception(error).response()
