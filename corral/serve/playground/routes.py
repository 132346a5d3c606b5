"""Routes of the playground page (`/`): the page itself and its static files (page.html,
*.js, *.css in this package directory). The page holds no data; everything it shows comes from
the API, fetched by the browser with the key typed into the page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from corral.serve.state import ServerState
from corral.serve.static_files import StaticFiles

PAGE_DIRECTORY = Path(__file__).parent
PAGE_NAME = "page.html"
STATIC_PREFIX = "/playground/static"


def install_playground_routes(app: FastAPI, state: ServerState) -> None:
    """Serve the playground page at `/` and its static files under /playground/static/."""
    del state  # the page reads everything through the API
    files = StaticFiles(PAGE_DIRECTORY)

    @app.get("/", include_in_schema=False)
    async def playground_page() -> Response:
        return files.response(PAGE_NAME)

    files.install(app, STATIC_PREFIX)
