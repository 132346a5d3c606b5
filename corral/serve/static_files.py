"""The static files of the server's pages (corral/serve/playground, corral/serve/dashboard): a
fixed set of files in the package, read once, served with their content type; any other name is
a 404 (no path is ever joined from the request)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from corral.serve.errors import APIError

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


class StaticFiles:
    """The files of one page's directory with a known suffix, by name."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in sorted(directory.rglob("*")):
            content_type = CONTENT_TYPES.get(path.suffix)
            if path.is_file() and content_type is not None:
                name = path.relative_to(directory).as_posix()
                self.files[name] = (path.read_bytes(), content_type)

    def response(self, name: str) -> Response:
        """The file called name (a path relative to the directory), or a 404."""
        entry = self.files.get(name)
        if entry is None:
            raise APIError(404, f"no static file {name!r}", code="not_found")
        content, content_type = entry
        return Response(content, media_type=content_type, headers={"Cache-Control": "no-cache"})

    def install(self, app: FastAPI, prefix: str) -> None:
        """GET {prefix}/{name}: the file (kept out of the OpenAPI description)."""

        @app.get(prefix + "/{name:path}", include_in_schema=False)
        async def static_file(name: str) -> Response:
            return self.response(name)
