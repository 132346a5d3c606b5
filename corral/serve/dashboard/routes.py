"""Routes of the dashboard page (`/dashboard`)."""

from __future__ import annotations

from fastapi import FastAPI

from corral.serve.state import ServerState


def install_dashboard_routes(app: FastAPI, state: ServerState) -> None:
    """Serve the dashboard page, its static files and its event stream."""
