"""What a request asks of KV transfer, as the OpenAI API's `kv_transfer_params` carries it.

- To a prefill engine: {"do_remote_decode": true}: compute the prompt, answer the first token,
  and keep the prompt's KV blocks for a decode engine to fetch (a lease).
- To a decode engine: the object the prefill engine answered (RemotePrefill.to_json()): fetch
  those blocks first, then decode; if the fetch fails the engine computes the prompt itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DO_REMOTE_DECODE = "do_remote_decode"
DO_REMOTE_PREFILL = "do_remote_prefill"
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


KVTransferRequest = RemoteDecode | RemotePrefill


def parse_kv_transfer_params(value: object) -> KVTransferRequest | None:
    """The request's kv_transfer_params, checked; ValueError naming the bad field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"kv_transfer_params must be an object, got {type(value).__name__}")
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


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """("host", port) of "tcp://host:port"."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)
