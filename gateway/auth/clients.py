"""API clients and their tokens: creation, lookup by token, grants, roles, rotation, revocation.

A token is 32 random bytes shown once at creation; only its SHA-256 is stored. A fast hash is
enough here (unlike passwords) because the token has 256 bits of entropy: there is nothing to
guess, and a slow hash would tax every request. The client record is read on every request,
with no cache, so that a revocation or rotation takes effect on the next request in every
worker and instance. Only the link from a token's hash to its client is kept once seen: it
never changes (a link is only ever created or deleted, and a token is never issued twice),
and it grants nothing alone, because the client record must still hold that hash.

Every change is committed together with its audit event. Changes that need dual control
(granting a seal, making or unmaking a key officer) are executed by ``gateway.custody`` once
a second key officer approved them; it passes the approval's own write and event as
``also_writes``/``also_events`` so that both land in the same atomic commit.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import AuditLog
from gateway.clock import isoformat, utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.storage import EventSealer, Record, StaleWrite, Storage, Write

ROLES = ("signer", "filer", "reviewer", "key_officer", "auditor", "admin")
KEY_OFFICER = "key_officer"
# What a grant may be narrowed to; a grant without formats covers all of them.
SIGNING_FORMATS = ("pdf", "cms", "hash", "csc")
TOKEN_PREFIX = "sg_"
CLIENT = "client"
CLIENT_NAME = "client_name"
TOKEN = "client_token"
# Token links a worker keeps (a few MB at most); past that it starts over.
LINKS_KEPT = 10_000


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
    # seal id -> the only formats this client may sign with it; seals not listed: any format.
    formats: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    # The command line on the gateway's own machine, which holds the HSM PIN anyway; never
    # set for a client that authenticates over HTTP.
    local_operator: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def has_role(self, *roles: str) -> bool:
        return self.is_admin or self.role in roles

    def may_use_seal(self, seal_id: str) -> bool:
        """Signers see only the seals granted to them; other roles see every seal."""
        return self.role != "signer" or seal_id in self.seals

    def may_sign_format(self, seal_id: str, fmt: str) -> bool:
        """Whether this client holds a grant for ``seal_id`` that covers ``fmt``.

        Signing needs the grant whatever the role: an admin sees every seal but signs with
        none it was not granted, since granting a seal is what dual control guards.
        """
        if self.local_operator:
            return True
        allowed = self.formats.get(seal_id)
        return seal_id in self.seals and (allowed is None or fmt in allowed)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "seals": list(self.seals),
            "status": self.status,
            "created_at": self.created_at,
            "formats": {seal: list(fmts) for seal, fmts in self.formats.items()},
        }

    @classmethod
    def from_record(cls, data: dict[str, object]) -> ApiClient:
        seals = data.get("seals") or []
        assert isinstance(seals, list)
        formats = data.get("formats") or {}
        assert isinstance(formats, dict)
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            role=str(data["role"]),
            seals=tuple(str(s) for s in seals),
            status=str(data["status"]),
            created_at=str(data["created_at"]),
            formats={str(k): tuple(str(f) for f in v) for k, v in formats.items()},
        )


class ClientRegistry:
    """Owns the records of kinds ``client`` and ``client_token``."""

    def __init__(self, storage: Storage, audit: AuditLog) -> None:
        self._storage = storage
        self._audit = audit
        self._links: dict[str, str] = {}  # token hash -> client id, as seen in storage

    async def create(
        self,
        name: str,
        role: str,
        seals: Iterable[str] = (),
        actor: str = "system",
        *,
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
    ) -> tuple[ApiClient, str]:
        """Create a client; return it and its token (the only time the token is visible)."""
        check_role(role)
        if not name.strip():
            raise ValidationFailed.one("name", "must not be empty")
        if await self.find_by_name(name) is not None:
            raise Conflict(f"a client named '{name}' exists already")
        token = new_token()
        client = ApiClient(
            id=str(uuid.uuid4()),
            name=name.strip(),
            role=role,
            seals=tuple(dict.fromkeys(seals)),
            status="active",
            created_at=isoformat(utcnow()),
        )
        record = {**client.public(), "token_hash": hash_token(token)}
        try:
            await self._audit.commit(
                [
                    Write(CLIENT, client.id, 0, record),
                    Write(TOKEN, hash_token(token), 0, {"client_id": client.id}),
                    # Names are unique (audit events name clients by them): the claim makes
                    # two creations of one name at once fail but one.
                    Write(CLIENT_NAME, client.name, 0, {"client_id": client.id}),
                    *also_writes,
                ],
                [
                    *also_events,
                    self._event(actor, "client.created", client.id,
                                {"name": client.name, "role": role,
                                 "seals": list(client.seals)}),
                ],
            )
        except StaleWrite:
            if await self._storage.get(CLIENT_NAME, client.name) is not None:
                raise Conflict(f"a client named '{client.name}' exists already") from None
            raise
        return client, token

    async def authenticate(self, token: str) -> ApiClient | None:
        """The active client holding this token, or None."""
        digest = hash_token(token)
        client_id = self._links.get(digest)
        if client_id is None:
            link = await self._storage.get(TOKEN, digest)
            if link is None:
                return None  # unknown tokens are not remembered: there may be any number
            client_id = str(link.data["client_id"])
            if len(self._links) >= LINKS_KEPT:
                self._links.clear()
            self._links[digest] = client_id
        record = await self._storage.get(CLIENT, client_id)
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

    async def list(self) -> builtins.list[ApiClient]:
        return [ApiClient.from_record(r.data) for r in await self._storage.list(CLIENT)]

    async def count_active(self, role: str) -> int:
        return len(await self._storage.list(CLIENT, where={"role": role, "status": "active"}))

    async def grant(
        self,
        client_id: str,
        seal_id: str,
        actor: str = "system",
        *,
        formats: Iterable[str] = (),
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
    ) -> ApiClient:
        """Grant a seal, for every format or only for ``formats``; a new grant replaces the
        seal's earlier format limits."""
        narrowed = check_formats(formats)

        def change(data: dict[str, Any]) -> dict[str, Any]:
            limits = {k: v for k, v in (data.get("formats") or {}).items() if k != seal_id}
            if narrowed:
                limits[seal_id] = list(narrowed)
            seals = list(dict.fromkeys([*(data.get("seals") or []), seal_id]))
            return {**data, "seals": seals, "formats": limits}

        return await self._change(
            client_id, change, actor, "client.granted",
            {"seal_id": seal_id, "formats": list(narrowed)}, also_writes, also_events,
        )

    async def revoke_grant(
        self, client_id: str, seal_id: str, actor: str = "system"
    ) -> ApiClient:
        def change(data: dict[str, Any]) -> dict[str, Any]:
            seals = [s for s in data.get("seals") or [] if s != seal_id]
            limits = {k: v for k, v in (data.get("formats") or {}).items() if k != seal_id}
            return {**data, "seals": seals, "formats": limits}

        return await self._change(client_id, change, actor, "client.grant_revoked",
                                  {"seal_id": seal_id})

    async def set_role(
        self,
        client_id: str,
        role: str,
        actor: str = "system",
        *,
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
    ) -> ApiClient:
        check_role(role)
        record = await self._current(client_id)
        previous = str(record.data["role"])
        if previous == role:
            raise Conflict(f"the client's role is {role} already")
        return await self._change(
            client_id, lambda data: {**data, "role": role}, actor, "client.role_changed",
            {"from": previous, "to": role}, also_writes, also_events, record=record,
        )

    async def rotate(self, client_id: str, actor: str = "system") -> str:
        """Replace the client's token; the old one stops working at once."""
        record = await self._current(client_id)
        token = new_token()
        old_hash = str(record.data["token_hash"])
        await self._audit.commit(
            [
                Write(
                    CLIENT,
                    client_id,
                    record.version,
                    {**record.data, "token_hash": hash_token(token)},
                ),
                Write(TOKEN, hash_token(token), 0, {"client_id": client_id}),
                Write(TOKEN, old_hash, await self._version(TOKEN, old_hash), None),
            ],
            [self._event(actor, "client.rotated", client_id, {"name": record.data["name"]})],
        )
        return token

    async def revoke(
        self,
        client_id: str,
        actor: str = "system",
        *,
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
    ) -> ApiClient:
        record = await self._current(client_id)
        if record.data["status"] == "revoked":
            raise Conflict("the client is revoked already")
        return await self._change(
            client_id, lambda data: {**data, "status": "revoked"}, actor, "client.revoked",
            {"name": record.data["name"]}, also_writes, also_events, record=record,
        )

    async def _change(
        self,
        client_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        actor: str,
        action: str,
        details: Mapping[str, Any],
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
        record: Record | None = None,
    ) -> ApiClient:
        """Apply ``change`` to the client's record and commit it with its audit event."""
        record = record or await self._current(client_id)
        data = change(dict(record.data))
        await self._audit.commit(
            [Write(CLIENT, client_id, record.version, data), *also_writes],
            [*also_events, self._event(actor, action, client_id, details)],
        )
        return ApiClient.from_record(data)

    def _event(
        self, actor: str, action: str, client_id: str, details: Mapping[str, Any]
    ) -> EventSealer:
        return self._audit.event_sealer(actor, action, f"client/{client_id}", details)

    async def _current(self, client_id: str) -> Record:
        record = await self._storage.get(CLIENT, client_id)
        if record is None:
            raise NotFound(f"no client with id {client_id}")
        return record

    async def _version(self, kind: str, key: str) -> int:
        record = await self._storage.get(kind, key)
        return record.version if record else 0


def check_role(role: str, field: str = "role") -> None:
    if role not in ROLES:
        raise ValidationFailed.one(field, f"must be one of {', '.join(ROLES)}")


def check_formats(formats: Iterable[str], field: str = "formats") -> tuple[str, ...]:
    narrowed = tuple(dict.fromkeys(str(f) for f in formats))
    unknown = [f for f in narrowed if f not in SIGNING_FORMATS]
    if unknown:
        raise ValidationFailed.one(field, f"must name formats among {', '.join(SIGNING_FORMATS)}")
    return narrowed
