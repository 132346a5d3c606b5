"""The KV transfer wire protocol (torch-free): length-prefixed JSON frames on a TCP connection,
the blocks' bytes after the header (tcp) or in a shared-memory segment it names (shm).

    decode -> prefill  ASK     {"transfer_id", "kv_identity", "block_hashes": [...],
                                "transport": "tcp" | "shm"}
    prefill -> decode  HEADER  {"status": "ok", "num_bytes", "crc32", "shm_name"?}
                               or {"status": "refused", "reason"}
                       PAYLOAD num_bytes raw bytes (tcp only)
    decode -> prefill  ACK     {"ack": true} once the copy is verified, else
                               {"ack": false, "reason"}

The prefill side releases its lease when the ACK frame arrives, or as failed when the
connection ends first (the decode engine recomputes).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from corral.core.block_hash import BlockHash

MAX_FRAME_BYTES = 16 << 20  # JSON frames; payloads are not frames
_LENGTH = struct.Struct(">I")


def encode_hash(block_hash: BlockHash) -> str:
    return block_hash.hex() if isinstance(block_hash, bytes) else f"int:{block_hash}"


def decode_hash(text: str) -> BlockHash:
    """encode_hash's inverse; ValueError for anything else."""
    if text.startswith("int:"):
        return int(text[4:])
    return bytes.fromhex(text)


def send_frame(conn: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    conn.sendall(_LENGTH.pack(len(data)) + data)


def recv_frame(conn: socket.socket) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(recv_exactly(conn, _LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ConnectionError(f"a {length}-byte frame exceeds {MAX_FRAME_BYTES}")
    message = json.loads(recv_exactly(conn, length))
    if not isinstance(message, dict):
        raise ConnectionError("a frame is not a JSON object")
    return message


def recv_exactly(conn: socket.socket, num_bytes: int) -> bytes:
    """num_bytes from conn; ConnectionError when it closes first."""
    buffer = bytearray(num_bytes)
    view = memoryview(buffer)
    received = 0
    while received < num_bytes:
        count = conn.recv_into(view[received:], num_bytes - received)
        if count == 0:
            raise ConnectionError(f"closed after {received} of {num_bytes} bytes")
        received += count
    return bytes(buffer)
