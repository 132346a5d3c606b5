"""API keys (constant-time, never logged) and request-body limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.serve.errors import APIError

# Endpoints a load balancer or orchestrator probes without credentials, and the static pages
# (no data in them: the pages send the key, typed into them, with each request for data).
OPEN_PATHS = frozenset({"/health", "/", "/dashboard"})
OPEN_PATH_PREFIXES = ("/playground/static/", "/dashboard/static/")
# What a surrogate code point looks like in a body: a \uD800-\uDFFF escape, or its UTF-8-style
# bytes (json.loads decodes bytes with surrogatepass). Bodies without it need no walk.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def key_identity(api_key: str) -> str:
    """A stable, non-reversible name for an API key (the client id of its requests)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PATH_PREFIXES)


class APIKeyMiddleware:
    """Refuses (401) every request but those to OPEN_PATHS without `Authorization: Bearer <key>`
    for one of the keys; records the key's identity in request.state.api_key_identity."""

    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...]) -> None:
        self.app = app
        self._keys = [(key.encode(), key_identity(key)) for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = credentials.strip()
                break
        identity = None
        for key, key_id in self._keys:
            # Every key is compared, the whole length: the time says nothing about the keys.
            if hmac.compare_digest(token, key):
                identity = key_id
        if identity is None:
            error = APIError(
                401,
                "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_identity"] = identity
        await self.app(scope, receive, send)


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The decoded JSON body: 413 past max_bytes (checked before reading when the length is
    declared), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(len(body), max_bytes, at_least=True)
    if not body:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, deep nesting
        raise APIError(400, f"the request body is not valid JSON: {error}") from None
    if _SURROGATE_HINT.search(body):
        _refuse_lone_surrogates(data)
    return data


def _refuse_lone_surrogates(data: Any) -> None:
    """400 if a string (or key) holds a lone surrogate: JSON lets "\\ud800" through, but it is
    no Unicode character, and no tokenizer, template or UTF-8 response can carry it."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise APIError(
                    400,
                    f"the request body holds a lone surrogate ({item[error.start]!r} at "
                    f"character {error.start} of a string); JSON text must be valid Unicode",
                ) from None


def _too_large(num_bytes: int, max_bytes: int, at_least: bool = False) -> APIError:
    size = f"{'more than ' if at_least else ''}{num_bytes if not at_least else max_bytes} bytes"
    return APIError(
        413,
        f"the request body ({size}) exceeds the limit of {max_bytes} bytes "
        f"(--max-request-body-bytes)",
        code="request_too_large",
    )
