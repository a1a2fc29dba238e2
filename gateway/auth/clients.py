"""API clients and their tokens: creation, lookup by token, grants, rotation and revocation.

A token is 32 random bytes shown once at creation; only its SHA-256 is stored. A fast hash is
enough here (unlike passwords) because the token has 256 bits of entropy: there is nothing to
guess, and a slow hash would tax every request. Lookups read storage on every request, with
no cache, so that a revocation takes effect on the next request in every worker and instance.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.clock import isoformat, utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.storage import Record, Storage, Write

ROLES = ("signer", "filer", "reviewer", "key_officer", "auditor", "admin")
TOKEN_PREFIX = "sg_"
CLIENT = "client"
TOKEN = "client_token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiClient:
    id: str
    name: str
    role: str
    seals: tuple[str, ...]
    status: str
    created_at: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def has_role(self, *roles: str) -> bool:
        return self.is_admin or self.role in roles

    def may_use_seal(self, seal_id: str) -> bool:
        """Signers see only the seals granted to them; other roles see every seal."""
        return self.role != "signer" or seal_id in self.seals

    def public(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.name, "role": self.role, "seals": list(self.seals),
            "status": self.status, "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, data: dict[str, object]) -> ApiClient:
        seals = data.get("seals") or []
        assert isinstance(seals, list)
        return cls(
            id=str(data["id"]), name=str(data["name"]), role=str(data["role"]),
            seals=tuple(str(s) for s in seals), status=str(data["status"]),
            created_at=str(data["created_at"]),
        )


class ClientRegistry:
    """Owns the records of kinds ``client`` and ``client_token``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def create(
        self, name: str, role: str, seals: Iterable[str] = ()
    ) -> tuple[ApiClient, str]:
        """Create a client; return it and its token (the only time the token is visible)."""
        if role not in ROLES:
            raise ValidationFailed.one("role", f"must be one of {', '.join(ROLES)}")
        if not name.strip():
            raise ValidationFailed.one("name", "must not be empty")
        if await self.find_by_name(name) is not None:
            raise Conflict(f"a client named '{name}' exists already")
        token = new_token()
        client = ApiClient(
            id=str(uuid.uuid4()), name=name.strip(), role=role, seals=tuple(dict.fromkeys(seals)),
            status="active", created_at=isoformat(utcnow()),
        )
        record = {**client.public(), "token_hash": hash_token(token)}
        await self._storage.commit([
            Write(CLIENT, client.id, 0, record),
            Write(TOKEN, hash_token(token), 0, {"client_id": client.id}),
        ])
        return client, token

    async def authenticate(self, token: str) -> ApiClient | None:
        """The active client holding this token, or None."""
        digest = hash_token(token)
        link = await self._storage.get(TOKEN, digest)
        if link is None:
            return None
        record = await self._storage.get(CLIENT, str(link.data["client_id"]))
        if record is None or record.data.get("status") != "active":
            return None
        # The index lookup already matched; compare again in constant time against the
        # client's current hash so a stale link after rotation can never authenticate.
        if not hmac.compare_digest(str(record.data.get("token_hash", "")), digest):
            return None
        return ApiClient.from_record(record.data)

    async def get(self, client_id: str) -> ApiClient:
        record = await self._storage.get(CLIENT, client_id)
        if record is None:
            raise NotFound(f"no client with id {client_id}")
        return ApiClient.from_record(record.data)

    async def find_by_name(self, name: str) -> ApiClient | None:
        found = await self._storage.list(CLIENT, where={"name": name.strip()}, limit=1)
        return ApiClient.from_record(found[0].data) if found else None

    async def resolve(self, id_or_name: str) -> ApiClient:
        record = await self._storage.get(CLIENT, id_or_name)
        if record is not None:
            return ApiClient.from_record(record.data)
        client = await self.find_by_name(id_or_name)
        if client is None:
            raise NotFound(f"no client with id or name '{id_or_name}'")
        return client

    async def list(self) -> list[ApiClient]:
        return [ApiClient.from_record(r.data) for r in await self._storage.list(CLIENT)]

    async def grant(self, client_id: str, seal_id: str) -> ApiClient:
        return await self._update_seals(client_id, lambda seals: [*seals, seal_id])

    async def revoke_grant(self, client_id: str, seal_id: str) -> ApiClient:
        return await self._update_seals(client_id, lambda seals: [s for s in seals if s != seal_id])

    async def rotate(self, client_id: str) -> str:
        """Replace the client's token; the old one stops working at once."""
        record = await self._current(client_id)
        token = new_token()
        old_hash = str(record.data["token_hash"])
        await self._storage.commit([
            Write(CLIENT, client_id, record.version, {**record.data, "token_hash": hash_token(token)}),
            Write(TOKEN, hash_token(token), 0, {"client_id": client_id}),
            Write(TOKEN, old_hash, await self._version(TOKEN, old_hash), None),
        ])
        return token

    async def revoke(self, client_id: str) -> ApiClient:
        record = await self._current(client_id)
        data = {**record.data, "status": "revoked"}
        await self._storage.commit([Write(CLIENT, client_id, record.version, data)])
        return ApiClient.from_record(data)

    async def _update_seals(
        self, client_id: str, change: Callable[[list[str]], list[str]]
    ) -> ApiClient:
        record = await self._current(client_id)
        seals = list(dict.fromkeys(change(list(record.data.get("seals") or []))))
        data = {**record.data, "seals": seals}
        await self._storage.commit([Write(CLIENT, client_id, record.version, data)])
        return ApiClient.from_record(data)

    async def _current(self, client_id: str) -> Record:
        record = await self._storage.get(CLIENT, client_id)
        if record is None:
            raise NotFound(f"no client with id {client_id}")
        return record

    async def _version(self, kind: str, key: str) -> int:
        record = await self._storage.get(kind, key)
        return record.version if record else 0
