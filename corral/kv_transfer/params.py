"""What a request asks of KV transfer, as the OpenAI API's `kv_transfer_params` carries it.

- To a prefill engine: {"do_remote_decode": true}: compute the prompt, answer the first token,
  and keep the prompt's KV blocks for a decode engine to fetch (a lease).
- To a decode engine: the object the prefill engine answered (RemotePrefill.to_json()): fetch
  those blocks first, then decode; if the fetch fails the engine computes the prompt itself.
- To the engine a running request migrates to (live migration, corral/core/migration.py): what
  the source engine answered (Resume.to_json()): the output so far under
  "resume_output_token_ids", and, when the source lent blocks, a RemotePrefill's fields for
  them. The engine continues the request after those tokens as if it had generated them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DO_REMOTE_DECODE = "do_remote_decode"
DO_REMOTE_PREFILL = "do_remote_prefill"
RESUME_OUTPUT_TOKEN_IDS = "resume_output_token_ids"
TRANSPORTS = ("tcp", "shm")


@dataclass(frozen=True, slots=True)
class RemoteDecode:
    """Keep this request's prompt KV for a decode engine."""


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Where this request's prompt KV waits: a lease on a prefill engine."""

    transfer_id: str
    endpoint: str  # "tcp://host:port" of the prefill engine's transfer server
    kv_identity: str  # model weights, tokenizer and KV layout (corral.model.kv_identity)
    block_size: int
    num_blocks: int  # full prompt blocks the lease holds
    transport: str = "tcp"

    def to_json(self) -> dict[str, Any]:
        return {
            DO_REMOTE_PREFILL: True,
            "transfer_id": self.transfer_id,
            "endpoint": self.endpoint,
            "kv_identity": self.kv_identity,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "transport": self.transport,
        }


@dataclass(frozen=True, slots=True)
class Resume:
    """Continue a request migrated from another engine: the tokens it generated there, and
    where the KV of its computed full blocks waits (None: compute everything here)."""

    output_token_ids: tuple[int, ...]
    remote: RemotePrefill | None = None

    def to_json(self) -> dict[str, Any]:
        body = self.remote.to_json() if self.remote is not None else {}
        body[RESUME_OUTPUT_TOKEN_IDS] = list(self.output_token_ids)
        return body


KVTransferRequest = RemoteDecode | RemotePrefill | Resume


def parse_kv_transfer_params(value: object) -> KVTransferRequest | None:
    """The request's kv_transfer_params, checked; ValueError naming the bad field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"kv_transfer_params must be an object, got {type(value).__name__}")
    if RESUME_OUTPUT_TOKEN_IDS in value:
        return _parse_resume(value)
    if value.get(DO_REMOTE_DECODE):
        return RemoteDecode()
    if not value.get(DO_REMOTE_PREFILL):
        raise ValueError(
            f"kv_transfer_params needs {DO_REMOTE_DECODE!r} or {DO_REMOTE_PREFILL!r} set to true"
        )
    fields: dict[str, Any] = {}
    for name, kind in (("transfer_id", str), ("endpoint", str), ("kv_identity", str),
                       ("block_size", int), ("num_blocks", int)):  # fmt: skip
        field_value = value.get(name)
        if not isinstance(field_value, kind) or isinstance(field_value, bool):
            raise ValueError(f"kv_transfer_params.{name} must be a {kind.__name__}")
        fields[name] = field_value
    if not fields["endpoint"].startswith("tcp://"):
        raise ValueError("kv_transfer_params.endpoint must be tcp://host:port")
    if fields["block_size"] < 1 or fields["num_blocks"] < 1:
        raise ValueError("kv_transfer_params.block_size and num_blocks must be >= 1")
    transport = value.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise ValueError(f"kv_transfer_params.transport must be one of {TRANSPORTS}")
    return RemotePrefill(**fields, transport=transport)


def _parse_resume(value: dict[str, Any]) -> Resume:
    token_ids = value[RESUME_OUTPUT_TOKEN_IDS]
    if not isinstance(token_ids, list) or not token_ids:
        raise ValueError(f"kv_transfer_params.{RESUME_OUTPUT_TOKEN_IDS} must be a non-empty list")
    for token_id in token_ids:
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(
                f"kv_transfer_params.{RESUME_OUTPUT_TOKEN_IDS} holds {token_id!r}, not a token id"
            )
    remote = None
    if value.get(DO_REMOTE_PREFILL):
        rest = {key: item for key, item in value.items() if key != RESUME_OUTPUT_TOKEN_IDS}
        parsed = parse_kv_transfer_params(rest)
        assert isinstance(parsed, RemotePrefill)
        remote = parsed
    return Resume(tuple(token_ids), remote)


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """("host", port) of "tcp://host:port"."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)
