"""The engine flags of KV transfer (`corral serve --kv-role ...`; docs/disaggregation.md)."""

from __future__ import annotations

import argparse

from corral.config import KV_ROLES, KVTransferConfig


def add_kv_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = KVTransferConfig()
    group = parser.add_argument_group("KV transfer (prefill/decode disaggregation)")
    group.add_argument(
        "--kv-role",
        choices=KV_ROLES,
        default=None,
        help="prefill: lend finished prompts' KV (requests with kv_transfer_params "
        "do_remote_decode); decode: fetch it (kv_transfer_params from a prefill answer); both; "
        "default off",
    )
    group.add_argument(
        "--kv-transfer-host",
        default=defaults.host,
        help="where a prefill engine's transfer server listens (0.0.0.0: every interface, "
        "advertising this machine's address)",
    )
    group.add_argument(
        "--kv-transfer-port", type=int, default=defaults.port, help="its port (0: a free one)"
    )
    group.add_argument(
        "--kv-transfer-transport",
        choices=("tcp", "shm"),
        default=defaults.transport,
        help="how lent blocks travel: tcp (any machine), shm (shared memory, same machine)",
    )
    group.add_argument(
        "--kv-lease-timeout-s",
        type=float,
        default=defaults.lease_timeout_s,
        help="how long a prefill engine keeps lent blocks for a decode engine that never "
        "fetches them",
    )


def kv_transfer_config_from_args(args: argparse.Namespace) -> KVTransferConfig:
    return KVTransferConfig(
        role=getattr(args, "kv_role", None),
        host=getattr(args, "kv_transfer_host", "127.0.0.1"),
        port=getattr(args, "kv_transfer_port", 0),
        transport=getattr(args, "kv_transfer_transport", "tcp"),
        lease_timeout_s=getattr(args, "kv_lease_timeout_s", 30.0),
    )
