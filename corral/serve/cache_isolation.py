"""Prefix-cache isolation between tenants: a salt derived from who sent the request.

A prefix-cache hit makes a request measurably faster, so a client who can time its own requests
can learn whether another client recently sent the same prefix. Salting the block hashes by
tenant closes that channel: blocks are shared only among requests with the same salt.
"""

from __future__ import annotations

import hashlib
import json

# none: every request may hit every cached block (one tenant, or tenants that trust each other);
# api-key: one cache namespace per API key (refused at start-up without keys);
# user: one per (API key, `user` field) pair, so that no key can join another key's users.
CACHE_ISOLATION_MODES = ("none", "api-key", "user")


def tenant_cache_salt(
    mode: str, api_key_identity: str | None, user: str | None, request_salt: str | None
) -> str | None:
    """The cache salt the engine uses: the request's own `cache_salt` namespaced by the tenant
    the isolation mode names. Requests with no tenant (no key, and in user mode no user) share
    one namespace."""
    if mode not in CACHE_ISOLATION_MODES:
        raise ValueError(f"cache isolation must be one of {CACHE_ISOLATION_MODES}, got {mode!r}")
    if mode == "none":
        return request_salt
    tenant = [api_key_identity] if mode == "api-key" else [api_key_identity, user]
    if all(part is None for part in tenant):
        return request_salt
    # JSON keeps the parts apart (no user text can pass for another tenant's key, user or
    # salt), and its ASCII escapes encode any string; the digest keeps the salt short.
    parts = json.dumps([mode, *tenant, request_salt]).encode()
    return f"tenant-{hashlib.sha256(parts).hexdigest()[:32]}"
