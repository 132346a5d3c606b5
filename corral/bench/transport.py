"""HTTP transport for `corral bench serve`: one aiohttp session, streamed response lines.

The client above it only sees Transport, so tests can swap in a scripted one. Every line of a
streamed body is handed up as raw bytes; parsing happens after the stream ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlparse

_READ_BUFFER_BYTES = 1 << 20


class StreamResponse(Protocol):
    status: int

    async def read_text(self) -> str:
        """The whole body as text (error responses)."""

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, as it arrives."""


class Transport(Protocol):
    def post(
        self, path: str, payload: dict[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """POST payload as JSON to path; the response body is read through the manager."""

    async def get_json(self, path: str) -> Any:
        """GET path and decode its JSON body (raises on a non-200 status)."""


def normalize_base_url(base_url: str) -> str:
    """'http://host:port[/v1][/]' -> 'http://host:port'; ValueError for anything not http(s)."""
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--base-url must look like http://host:port, got {base_url!r}")
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class _AiohttpResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status

    async def read_text(self) -> str:
        return await self._response.text(errors="replace")

    async def lines(self) -> AsyncIterator[bytes]:
        async for line in self._response.content:
            yield line


class HttpTransport:
    """aiohttp client for one base URL; use as `async with HttpTransport(...) as transport`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._max_connections = max_connections or 0  # 0: unbounded
        self._session: Any = None

    async def __aenter__(self) -> HttpTransport:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers=self._headers,
            read_bufsize=_READ_BUFFER_BYTES,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    @contextlib.asynccontextmanager
    async def post(self, path: str, payload: dict[str, Any]) -> AsyncIterator[StreamResponse]:
        async with self._session.post(self.base_url + path, json=payload) as response:
            yield _AiohttpResponse(response)

    async def get_json(self, path: str) -> Any:
        async with self._session.get(self.base_url + path) as response:
            if response.status != 200:
                body = (await response.text(errors="replace"))[:300]
                raise RuntimeError(f"GET {path} answered HTTP {response.status}: {body}")
            return await response.json(content_type=None)

    async def get_text(self, path: str) -> str:
        """GET path and return its body as text (raises on a non-200 status)."""
        async with self._session.get(self.base_url + path) as response:
            body = await response.text(errors="replace")
            if response.status != 200:
                raise RuntimeError(f"GET {path} answered HTTP {response.status}: {body[:300]}")
            return body
