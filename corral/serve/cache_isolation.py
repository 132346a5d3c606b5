"""Prefix-cache isolation between tenants: a salt derived from who sent the request.

A prefix-cache hit makes a request measurably faster, so a client who can time its own requests
can learn whether another client recently sent the same prefix. Salting the block hashes by
tenant closes that channel: blocks are shared only among requests with the same salt.
"""

from __future__ import annotations

import hashlib

# none: every request may hit every cached block (one tenant, or tenants that trust each other);
# api-key: one cache namespace per API key; user: per client id (the `user` field, else the key).
CACHE_ISOLATION_MODES = ("none", "api-key", "user")


def tenant_cache_salt(
    mode: str, api_key_identity: str | None, user: str | None, request_salt: str | None
) -> str | None:
    """The cache salt the engine uses: the request's own `cache_salt` namespaced by the tenant
    the isolation mode names. Requests with no tenant (no key, no user) share one namespace."""
    if mode not in CACHE_ISOLATION_MODES:
        raise ValueError(f"cache isolation must be one of {CACHE_ISOLATION_MODES}, got {mode!r}")
    if mode == "none":
        return request_salt
    tenant = api_key_identity if mode == "api-key" else (user or api_key_identity)
    if tenant is None:
        return request_salt
    # A digest keeps user-chosen text from colliding with another tenant's (tenant, salt) pair.
    digest = hashlib.sha256(f"{mode}\0{tenant}\0{request_salt or ''}".encode()).hexdigest()
    return f"tenant-{digest[:32]}"
