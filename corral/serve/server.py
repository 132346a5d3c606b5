"""Running the app under uvicorn, with draining on SIGTERM / Ctrl-C."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from corral.serve.config import ServerConfig
from corral.serve.state import ServerState

logger = logging.getLogger(__name__)


class ClosingServer(uvicorn.Server):
    """Sets app.state.closing on SIGTERM / Ctrl-C, before uvicorn's graceful shutdown waits for
    the connections in flight: streams that would never end by themselves (the dashboard's
    events) end then."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        if hasattr(app, "state"):
            app.state.closing = True
        super().handle_exit(sig, frame)


class DrainingServer(ClosingServer):
    """Marks the app as draining (503 on new requests and on /health) before uvicorn's own
    graceful shutdown, which stops listening and waits for the requests in flight (up to
    timeout_graceful_shutdown); the app's lifespan then stops the engine."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.state.draining:
            logger.info(
                "draining: %d request(s) in flight", self.state.engine.num_unfinished_requests
            )
        self.state.draining = True
        super().handle_exit(sig, frame)


def serve(
    app: FastAPI, config: ServerConfig, *, log_level: str = "info", access_log: bool = True
) -> bool:
    """Serve until SIGTERM / Ctrl-C and drained. False if the server never started (for
    example, the engine core failed to load the model)."""
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=config.drain_timeout_s,
        ),
        app.state.server,
    )
    return run_until_drained(server)


def run_until_drained(server: uvicorn.Server) -> bool:
    """Run a uvicorn server to its drained end; True if it had started. uvicorn re-raises the
    signal that stopped it once it has drained, under the handler found at start; a no-op one
    there makes a drained shutdown return (exit 0) instead of dying by the signal."""
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started


def _drained(sig: int, frame: FrameType | None) -> None:
    logger.info("shut down after %s", signal.Signals(sig).name)
