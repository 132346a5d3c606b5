"""`corral serve`'s live dashboard (`--dashboard-interval-ms`, default 500; 0: off): engine
frames (corral/serve/dashboard/engine_frames.py) on the dashboard routes
(corral/serve/dashboard/frame_routes.py); GET /dashboard/state carries every step the engine
still keeps."""

from __future__ import annotations

from fastapi import FastAPI

from corral.serve.dashboard.engine_frames import EngineFrames
from corral.serve.dashboard.frame_routes import install_frame_routes
from corral.serve.dashboard.publisher import FramePublisher
from corral.serve.state import ServerState


def install_dashboard_routes(app: FastAPI, state: ServerState) -> FramePublisher | None:
    """`corral serve`'s dashboard; None (and no routes) when dashboard_interval_ms is 0."""
    interval_ms = state.config.dashboard_interval_ms
    if interval_ms == 0:
        return None
    frames = EngineFrames(state.engine, state.metrics, state.model_name)
    publisher = FramePublisher(frames.frame, interval_ms)
    app.state.dashboard = publisher
    install_frame_routes(app, publisher, lambda: frames.frame(since_step=0), "dashboard.html")
    return publisher
