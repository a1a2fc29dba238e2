"""Dual control: irreversible or privilege-granting changes need a second, different key officer.

    request (officer A) ─► pending ─ approve (officer B, B ≠ A) ─► approving ─► approved
                                   ├ reject (any key officer) ──────────────► rejected
                                   └ expires_at passes ─────────────────────► expired

A request is a record of kind ``approval_request``. Approving it runs the action, and the
action's own writes, the request's change to ``approved`` and both audit events go into one
atomic commit; the action's event and ``approval.approved`` sit side by side in the chain.
``approving`` is a claim taken before the action starts, so that two officers approving at
once, or a reject racing an approve, can never run an action twice or run a rejected one; it
matters for ``destroy_key``, whose token step cannot be part of a storage commit. If the
action fails, the claim is given back and the request is pending again; if the process dies
mid-way, the same officer approving again finishes the job (every action step is safe to
repeat), while the request is in time and its requester still an officer; after
``CLAIM_SECONDS`` the claim lapses and the request is pending again for every officer (a
later commit of the first approval then fails on the request's version). ``expired`` is
derived from the clock and never written. The client a request is about (a revocation, a
role change, a grant) neither approves nor rejects it.

Only active clients whose role is exactly ``key_officer`` take part: an ``admin`` passes
every role check of the HTTP routes, so letting it stand in here would let one holder of an
admin token and one key officer, or two admin tokens, replace the second officer. For the
same reason the officers themselves are guarded: creating one, changing a role to or from a
privileged one, and revoking a client (the CLI asks for it when the client is a key officer)
are actions here, and a request whose requester is no longer an active key officer is not
approved. The only exception is the start: while fewer than two active key officers exist,
nobody could approve anything, so `sealgate clients create` makes the first two directly.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from gateway.audit import AuditLog
from gateway.auth import ApiClient, ClientRegistry
from gateway.auth.clients import KEY_OFFICER, check_formats, check_role
from gateway.clock import isoformat, utcnow
from gateway.clock import parse as parse_time
from gateway.errors import (
    ApprovalExpired,
    Conflict,
    DualControlRefused,
    NotFound,
    ValidationFailed,
)
from gateway.keys.registry import KeyRegistry
from gateway.seals.registry import SealRegistry
from gateway.settings import AuthSettings
from gateway.storage import EventSealer, Record, StaleWrite, Storage, Write

log = logging.getLogger(__name__)

APPROVAL = "approval_request"
STATUSES = ("pending", "approving", "approved", "rejected", "expired")
# Roles whose holders can act as key officers (admin passes every route's role check), so
# giving or taking them away is a key officer role change.
PRIVILEGED_ROLES = (KEY_OFFICER, "admin")
MAX_REASON = 500
# How long an approval may hold its claim: far longer than any action takes (destroying a
# key is one HSM call and one commit), short enough that a crashed approval does not block.
CLAIM_SECONDS = 300

JSONRecord = dict[str, Any]


class Action(enum.StrEnum):
    DESTROY_KEY = "destroy_key"
    GRANT_SEAL = "grant_seal"
    SET_ROLE = "set_role"
    CREATE_CLIENT = "create_client"
    REVOKE_CLIENT = "revoke_client"

    @classmethod
    def parse(cls, value: object) -> Action:
        try:
            return cls(str(value))
        except ValueError:
            allowed = ", ".join(a.value for a in cls)
            raise ValidationFailed.one("action", f"must be one of {allowed}") from None


# Every action's parameters: name -> required.
PARAMETERS: dict[Action, dict[str, bool]] = {
    Action.DESTROY_KEY: {"key_id": True},
    Action.GRANT_SEAL: {"client_id": True, "seal_id": True, "formats": False},
    Action.SET_ROLE: {"client_id": True, "role": True},
    Action.CREATE_CLIENT: {"name": True, "role": True, "seals": False},
    Action.REVOKE_CLIENT: {"client_id": True},
}

Executor = Callable[[Sequence[Write], Sequence[EventSealer]], Awaitable[JSONRecord]]


def _refuse_the_target(officer: ApiClient, data: Mapping[str, Any]) -> None:
    """The client a request is about does not decide it: an officer whose revocation (or
    demotion) is requested could otherwise veto it every time it is filed."""
    if data["params"].get("client_id") == officer.id:
        raise DualControlRefused(
            "this request is about you; another key officer decides it")


def _require_in_time(data: Mapping[str, Any]) -> None:
    """For a claimed request, whose effective status is not ``expired`` while claimed."""
    expires_at = parse_time(data.get("expires_at"))
    if expires_at is not None and utcnow() >= expires_at:
        raise _expired(data)


def _expired(data: Mapping[str, Any]) -> ApprovalExpired:
    return ApprovalExpired(f"the request expired at {data['expires_at']}; file a new one")


def needs_dual_control(role: str, seals: Sequence[str] = ()) -> bool:
    """Whether creating a client with this role and these grants needs a second officer."""
    return role in PRIVILEGED_ROLES or bool(seals)


def effective_status(data: Mapping[str, Any], now: Any) -> str:
    """The stored status, except that a pending request past ``expires_at`` is ``expired``,
    and a claim older than ``CLAIM_SECONDS`` has lapsed: its officer's process died or its
    release failed, and the request is pending (or expired) again for every officer."""
    status = str(data["status"])
    claimed_at = parse_time(data.get("claimed_at"))
    if status == "approving" and (
        claimed_at is None or now >= claimed_at + timedelta(seconds=CLAIM_SECONDS)
    ):
        status = "pending"
    expires_at = parse_time(data.get("expires_at"))
    if status == "pending" and expires_at is not None and now >= expires_at:
        return "expired"
    return status


def public_view(data: Mapping[str, Any], now: Any) -> JSONRecord:
    return {**data, "status": effective_status(data, now)}


class DualControl:
    """Owns records of kind ``approval_request``; executes approved actions."""

    def __init__(
        self,
        settings: AuthSettings,
        storage: Storage,
        audit: AuditLog,
        clients: ClientRegistry,
        keys: KeyRegistry,
        seals: SealRegistry,
    ) -> None:
        self._ttl = timedelta(hours=settings.approval_ttl_hours)
        self._storage = storage
        self._audit = audit
        self._clients = clients
        self._keys = keys
        self._seals = seals

    async def request(
        self, officer: ApiClient, action: object, params: Mapping[str, Any]
    ) -> JSONRecord:
        """File a request; its parameters are checked now, and again when it is approved."""
        require_officer(officer)
        act = Action.parse(action)
        checked = await self._check(act, _known_params(act, params))
        now = utcnow()
        approval_id = str(uuid.uuid4())
        data: JSONRecord = {
            "id": approval_id, "action": act.value, "params": checked,
            "requested_by": {"id": officer.id, "name": officer.name},
            "created_at": isoformat(now), "expires_at": isoformat(now + self._ttl),
            "status": "pending", "decided_by": None, "decided_at": None, "reason": None,
        }
        await self._audit.commit(
            [Write(APPROVAL, approval_id, 0, data)],
            [self._event(officer, "approval.requested", approval_id,
                         {"action": act.value, "params": checked})],
        )
        return data

    async def get(self, approval_id: str) -> JSONRecord:
        return public_view((await self._record(approval_id)).data, utcnow())

    async def list(self, status: str | None = None) -> list[JSONRecord]:
        if status is not None and status not in STATUSES:
            raise ValidationFailed.one("status", f"must be one of {', '.join(STATUSES)}")
        now = utcnow()
        views = [public_view(r.data, now)
                 for r in await self._storage.list(APPROVAL, limit=1_000_000)]
        return [v for v in views if status is None or v["status"] == status]

    async def approve(self, officer: ApiClient, approval_id: str) -> tuple[JSONRecord, JSONRecord]:
        """Approve and execute; returns the decided request and what the action produced."""
        require_officer(officer)
        record = await self._record(approval_id)
        data = record.data
        if officer.id == data["requested_by"]["id"]:
            raise DualControlRefused(
                "the officer who filed a request cannot approve it; a second key officer must")
        _refuse_the_target(officer, data)
        if effective_status(data, utcnow()) == "approving":
            if (data["decided_by"] or {}).get("id") != officer.id:
                raise Conflict("another key officer is approving this request right now")
            # Resuming an approval that was interrupted: the request must still be in time,
            # and its requester still an officer, as on the first attempt.
            _require_in_time(data)
            await self._require_requester_still_officer(data)
            claimed = record
        else:
            self._require_pending(data)
            await self._require_requester_still_officer(data)
            claimed = await self._claim(record, officer)
        decided = {**claimed.data, "status": "approved", "decided_at": isoformat(utcnow())}
        writes = [Write(APPROVAL, approval_id, claimed.version, decided)]
        events = [self._event(officer, "approval.approved", approval_id,
                              {"action": data["action"], "params": data["params"],
                               "requested_by": data["requested_by"]["name"]})]
        try:
            result = await self._execute(Action(data["action"]), data["params"], officer,
                                         writes, events)
        except StaleWrite:
            await self._release(claimed)
            raise Conflict("what the request changes was changed meanwhile; approve again "
                           "to retry") from None
        except Exception:
            await self._release(claimed)
            raise
        return decided, result

    async def reject(
        self, officer: ApiClient, approval_id: str, reason: object = None
    ) -> JSONRecord:
        """Any key officer may reject (the requester too: that withdraws the request),
        except the client the request is about."""
        require_officer(officer)
        text = str(reason or "").strip()
        if len(text) > MAX_REASON:
            raise ValidationFailed.one("reason", f"must be at most {MAX_REASON} characters")
        record = await self._record(approval_id)
        if officer.id != record.data["requested_by"]["id"]:
            _refuse_the_target(officer, record.data)
        self._require_pending(record.data)
        decided = {**record.data, "status": "rejected", "reason": text or None,
                   "decided_by": {"id": officer.id, "name": officer.name},
                   "decided_at": isoformat(utcnow())}
        try:
            await self._audit.commit(
                [Write(APPROVAL, approval_id, record.version, decided)],
                [self._event(officer, "approval.rejected", approval_id,
                             {"action": record.data["action"], "params": record.data["params"],
                              "reason": text})],
            )
        except StaleWrite:
            raise _decided_meanwhile() from None
        return decided

    # -- the actions -------------------------------------------------------------------------

    async def _check(self, action: Action, params: Mapping[str, Any]) -> JSONRecord:
        """Normalised parameters, or a 4xx naming what would keep the action from running."""
        if action is Action.DESTROY_KEY:
            key_id = _text(params, "key_id")
            await _as_field("params.key_id", self._keys.destroyable(key_id))
            return {"key_id": key_id}
        if action is Action.GRANT_SEAL:
            client = await self._active_client(_text(params, "client_id"))
            seal_id = _text(params, "seal_id")
            await self._grantable_seal("params.seal_id", seal_id)
            formats = check_formats(_list(params, "formats"), "params.formats")
            return {"client_id": client.id, "client_name": client.name, "seal_id": seal_id,
                    "formats": list(formats)}
        if action is Action.REVOKE_CLIENT:
            client = await self._active_client(_text(params, "client_id"))
            return {"client_id": client.id, "client_name": client.name, "role": client.role}
        if action is Action.SET_ROLE:
            client = await self._active_client(_text(params, "client_id"))
            role = _text(params, "role")
            check_role(role, "params.role")
            if client.role == role:
                raise Conflict(f"client {client.name} has role {role} already")
            return {"client_id": client.id, "client_name": client.name, "from_role": client.role,
                    "role": role}
        name = _text(params, "name")
        role = _text(params, "role")
        check_role(role, "params.role")
        if await self._clients.find_by_name(name) is not None:
            raise Conflict(f"a client named '{name}' exists already")
        seals = list(dict.fromkeys(str(s) for s in _list(params, "seals")))
        for seal_id in seals:
            await self._grantable_seal("params.seals", seal_id)
        return {"name": name, "role": role, "seals": seals}

    async def _execute(
        self, action: Action, params: Mapping[str, Any], officer: ApiClient,
        writes: Sequence[Write], events: Sequence[EventSealer],
    ) -> JSONRecord:
        # Checked again: the key, client or seal may have changed since the request was filed.
        await self._check(action, params)
        actor = officer.name
        if action is Action.DESTROY_KEY:
            key = await self._keys.destroy(params["key_id"], actor, also_writes=writes,
                                           also_events=events)
            return {"key": {"id": key["id"], "status": key["status"]}}
        if action is Action.GRANT_SEAL:
            client = await self._clients.grant(
                params["client_id"], params["seal_id"], actor, formats=params["formats"],
                also_writes=writes, also_events=events)
            return {"client": client.public()}
        if action is Action.REVOKE_CLIENT:
            client = await self._clients.revoke(params["client_id"], actor, also_writes=writes,
                                                also_events=events)
            return {"client": client.public()}
        if action is Action.SET_ROLE:
            client = await self._clients.set_role(params["client_id"], params["role"], actor,
                                                  also_writes=writes, also_events=events)
            return {"client": client.public()}
        client, token = await self._clients.create(
            params["name"], params["role"], params["seals"], actor,
            also_writes=writes, also_events=events)
        # The one moment this token exists outside the client's hands: the approving officer
        # passes it on, as an operator does with `sealgate clients create`.
        return {"client": client.public(), "token": token}

    # -- helpers -----------------------------------------------------------------------------

    async def _record(self, approval_id: str) -> Record:
        record = await self._storage.get(APPROVAL, approval_id)
        if record is None:
            raise NotFound(f"no approval request with id {approval_id}")
        return record

    @staticmethod
    def _require_pending(data: Mapping[str, Any]) -> None:
        status = effective_status(data, utcnow())
        if status == "expired":
            raise _expired(data)
        if status != "pending":
            raise Conflict(f"the request is {status}, not pending")

    async def _require_requester_still_officer(self, data: Mapping[str, Any]) -> None:
        """A request outlives nothing its requester lost: when a key officer's token is
        revoked (say, because it leaked), what was filed with it must not go through."""
        requester = await self._clients.get(str(data["requested_by"]["id"]))
        if requester.role != KEY_OFFICER or requester.status != "active":
            raise Conflict(f"{requester.name}, who filed the request, is no longer an active "
                           "key officer; a current officer must file it again")

    async def _claim(self, record: Record, officer: ApiClient) -> Record:
        claimed = {**record.data, "status": "approving", "claimed_at": isoformat(utcnow()),
                   "decided_by": {"id": officer.id, "name": officer.name}}
        try:
            result = await self._storage.commit(
                [Write(APPROVAL, record.key, record.version, claimed)])
        except StaleWrite:
            raise _decided_meanwhile() from None
        return result.records[0]

    async def _release(self, claimed: Record) -> None:
        """Make a request whose action failed pending again (its decision was not made)."""
        pending = {**claimed.data, "status": "pending", "decided_by": None}
        try:
            await self._storage.commit([Write(APPROVAL, claimed.key, claimed.version, pending)])
        except Exception:  # the caller's own error is the one to report
            log.warning("approval request %s stays claimed after a failed action; the same "
                        "officer approving again completes it", claimed.key)

    async def _grantable_seal(self, field: str, seal_id: str) -> None:
        """A seal that exists and is not cancelled: a cancelled seal never signs again, and a
        grant of it approved later would only mislead whoever reads the client's grants."""
        seal = await _as_field(field, self._seals.record(seal_id))
        if seal.data["status"] == "cancelled":
            raise Conflict(f"seal {seal_id} is cancelled")

    async def _active_client(self, id_or_name: str) -> ApiClient:
        client: ApiClient = await _as_field("params.client_id",
                                            self._clients.resolve(id_or_name))
        if client.status != "active":
            raise Conflict(f"client {client.name} is {client.status}")
        return client

    def _event(
        self, officer: ApiClient, action: str, approval_id: str, details: Mapping[str, Any]
    ) -> EventSealer:
        return self._audit.event_sealer(officer.name, action, f"approval/{approval_id}", details)


def _decided_meanwhile() -> Conflict:
    return Conflict("another key officer decided or is deciding this request; read it again")


def require_officer(client: ApiClient) -> None:
    """Dual control is between key officers; see the module docstring for why not admins."""
    if client.role != KEY_OFFICER or client.status != "active":
        raise DualControlRefused(
            f"only active key officers take part in dual control; {client.name} is "
            f"{client.role if client.status == 'active' else client.status}")


async def _as_field(field: str, lookup: Awaitable[Any]) -> Any:
    """A lookup whose 404 means the request named something that does not exist: 422."""
    try:
        return await lookup
    except NotFound as exc:
        raise ValidationFailed.one(field, exc.detail) from None


def _known_params(action: Action, params: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise ValidationFailed.one("params", "must be an object")
    allowed = PARAMETERS[action]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValidationFailed.one(f"params.{unknown[0]}", f"is not a parameter of {action}")
    missing = [name for name, required in allowed.items() if required and not params.get(name)]
    if missing:
        raise ValidationFailed.one(f"params.{missing[0]}", "is required")
    return params


def _text(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise ValidationFailed.one(f"params.{name}", "must be a string of 1 to 100 characters")
    return value.strip()


def _list(params: Mapping[str, Any], name: str) -> list[str]:
    value = params.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed.one(f"params.{name}", "must be a list of strings")
    return value
