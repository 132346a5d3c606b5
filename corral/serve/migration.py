"""Live migration over HTTP: the replica's side of the router's contract (docs/disaggregation.md).

- A router that can continue requests elsewhere marks them with the header
  `x-corral-migratable: 1`; only those may move (corral/core/migration.py says which of them can).
- `POST /corral/migrate_out` {"max_num_requests": k} or {"request_ids": [...]} (optionally
  "max_num_tokens": the largest request to move) moves requests out of this engine; the answer
  names them: {"migrated": [ids]}. With "precopy": true it only lends their computed blocks
  while they keep running: {"precopied": [{request_id, kv_transfer_params, block_hashes}]}.
- `POST /corral/prefetch` {"kv_transfer_params", "block_hashes"} (a precopied entry) fetches
  those blocks into this engine's prefix cache and answers {"ok": bool} once they arrived, so
  that the request's final move copies only the blocks filled since.
- A moved request's stream ends with one event `data: {"corral_migration": <kv_transfer_params>}`
  and [DONE] (no finish chunk, no usage chunk); a non-streaming request's answer has finish
  reason "migrated" and the kv_transfer_params. The router sends the client's body again, with
  those kv_transfer_params, to the engine that continues it: that engine's stream goes on after
  the text already sent, and its answer (and usage) counts the whole output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from corral.kv_transfer.params import RESUME_OUTPUT_TOKEN_IDS
from corral.request import RequestStatus
from corral.serve.errors import APIError
from corral.serve.streaming import json_response, sse

if TYPE_CHECKING:
    from corral.outputs import RequestOutput
    from corral.serve.state import ServerState

MIGRATABLE_HEADER = "x-corral-migratable"
MIGRATION_EVENT_KEY = "corral_migration"
MIGRATED = RequestStatus.FINISHED_MIGRATED.finish_reason  # "migrated"
MAX_MIGRATE_OUT = 100_000  # the most requests one POST /corral/migrate_out moves


def is_migratable(raw: Request) -> bool:
    """The request came through a router that continues migrated requests."""
    return raw.headers.get(MIGRATABLE_HEADER) == "1"


class MigrationWatch:
    """Watches a stream's outputs for its request moving to another engine: watch() passes
    them on, the moved one without its finish reason (its text, merged from several steps,
    is sent as usual) and stops there; event is then the stream's last event."""

    def __init__(self) -> None:
        self.event: bytes | None = None

    async def watch(
        self, outputs: AsyncIterator[tuple[int, RequestOutput]]
    ) -> AsyncIterator[tuple[int, RequestOutput]]:
        async for index, output in outputs:
            completions = output.outputs
            if not completions or completions[0].finish_reason != MIGRATED:
                yield index, output
                continue
            moved = {
                MIGRATION_EVENT_KEY: output.kv_transfer_params,
                "request_id": output.request_id,
            }
            self.event = sse(moved)
            if completions[0].text or completions[0].token_ids:
                completions[0].finish_reason = None
                output.finished = False
                yield index, output
            return


def num_resumed_tokens(kv_transfer_params: dict[str, Any] | None) -> int:
    """Output tokens a continued request generated before it moved here (usage counts them)."""
    if not isinstance(kv_transfer_params, dict):
        return 0
    token_ids = kv_transfer_params.get(RESUME_OUTPUT_TOKEN_IDS)
    return len(token_ids) if isinstance(token_ids, list) else 0


class MigrateOutRequest(BaseModel):
    max_num_requests: int = Field(1, ge=0, le=MAX_MIGRATE_OUT)
    request_ids: list[str] | None = Field(None, max_length=MAX_MIGRATE_OUT)
    # Only requests holding at most this many tokens (a rebalancing move's size limit).
    max_num_tokens: int | None = Field(None, ge=0)
    # Pre-copy only: lend the requests' blocks while they keep running.
    precopy: bool = False


class MigrateOutResponse(BaseModel):
    migrated: list[str] = []
    # precopy: per request its request_id, kv_transfer_params and block_hashes.
    precopied: list[dict[str, Any]] = []


class PrefetchRequest(BaseModel):
    kv_transfer_params: dict[str, Any]
    block_hashes: list[str] = Field(max_length=1_000_000)


class PrefetchResponse(BaseModel):
    ok: bool


def install_migration_routes(app: FastAPI, state: ServerState) -> None:
    """POST /corral/migrate_out and /corral/prefetch (see the module docstring)."""

    @app.post("/corral/migrate_out", response_model=MigrateOutResponse, include_in_schema=False)
    async def migrate_out(request: Request) -> Any:
        try:
            body = MigrateOutRequest.model_validate(await request.json())
        except ValueError as error:
            raise APIError(400, f"invalid migrate_out body: {error}", param="body") from None
        moved = await state.engine.migrate_out(
            body.max_num_requests, body.request_ids, body.max_num_tokens, precopy=body.precopy
        )
        if body.precopy:
            return json_response(MigrateOutResponse(precopied=moved))
        return json_response(MigrateOutResponse(migrated=moved))

    @app.post("/corral/prefetch", response_model=PrefetchResponse, include_in_schema=False)
    async def prefetch(request: Request) -> Any:
        try:
            body = PrefetchRequest.model_validate(await request.json())
            ok = await state.engine.prefetch(body.kv_transfer_params, body.block_hashes)
        except (ValueError, RuntimeError) as error:
            raise APIError(400, f"invalid prefetch body: {error}", param="body") from None
        return json_response(PrefetchResponse(ok=ok))
