"""API clients: hashed bearer tokens, roles, and per-seal grants."""

from gateway.auth.clients import (
    ROLES,
    ApiClient,
    ClientRegistry,
    hash_token,
)

__all__ = ["ROLES", "ApiClient", "ClientRegistry", "hash_token"]
