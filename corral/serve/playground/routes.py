"""Routes of the playground page (`/`)."""

from __future__ import annotations

from fastapi import FastAPI

from corral.serve.state import ServerState


def install_playground_routes(app: FastAPI, state: ServerState) -> None:
    """Serve the playground page at `/` and its static files."""
