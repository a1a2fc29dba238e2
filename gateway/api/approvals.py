"""Dual-control endpoints: key officers file, read, approve and reject approval requests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.bodies import json_object, json_response
from gateway.api.context import client, roles, services
from gateway.api.spec import (
    ANY_OBJECT,
    TEXT,
    TIME,
    Component,
    Query,
    array,
    documented,
    json_answer,
    json_body,
    nullable,
    obj,
    one_of,
    text,
)
from gateway.clock import utcnow
from gateway.custody import Action, public_view
from gateway.custody.dual_control import MAX_REASON, STATUSES

routes = web.RouteTableDef()

_OFFICER = obj({"id": TEXT, "name": TEXT})
APPROVAL = Component("Approval", obj({
    "id": TEXT, "action": one_of(Action), "params": ANY_OBJECT, "requested_by": _OFFICER,
    "created_at": TIME, "expires_at": TIME, "status": one_of(STATUSES),
    "decided_by": nullable(_OFFICER), "decided_at": nullable(TIME), "reason": nullable(TEXT),
    "claimed_at": TIME,
}, optional=["claimed_at"]))
LOCATION = {"Location": "Where the request and its decision are shown"}
_REASON = obj({"reason": nullable(text(min_length=0, max_length=MAX_REASON))}, required=[])


@routes.post("/v1/approvals")
@roles("key_officer")
@documented(json_answer(201, "The request, pending", APPROVAL, LOCATION),
            body=json_body(obj({"action": one_of(Action), "params": ANY_OBJECT},
                               optional=["params"])), errors=[404, 409, 422])
async def create_approval(request: web.Request) -> web.Response:
    """File a request (destroy_key, grant_seal, set_role, create_client) for a second officer."""
    body = await json_object(request)
    approval = await services(request).approvals.request(
        client(request), body.get("action"), body.get("params") or {})
    return created(approval)


@routes.get("/v1/approvals")
@roles("key_officer", "auditor")
@documented(json_answer(200, "Approval requests, oldest first",
                        obj({"approvals": array(APPROVAL)})),
            query=[Query("status", one_of(STATUSES))], errors=[422])
async def list_approvals(request: web.Request) -> web.Response:
    """Approval requests, oldest first; ``status`` narrows them (e.g. ``pending``)."""
    approvals = await services(request).approvals.list(request.query.get("status") or None)
    return json_response({"approvals": approvals})


@routes.get("/v1/approvals/{id}")
@roles("key_officer", "auditor")
@documented(json_answer(200, "The request", APPROVAL))
async def get_approval(request: web.Request) -> web.Response:
    """One approval request with its current status."""
    return json_response(await services(request).approvals.get(request.match_info["id"]))


@routes.post("/v1/approvals/{id}/approve")
@roles("key_officer")
@documented(json_answer(200, "The request approved and what its action did",
                        obj({"approval": APPROVAL, "result": ANY_OBJECT})),
            errors=[409, 422])
async def approve(request: web.Request) -> web.Response:
    """Approve another officer's request; the action runs now, in the same commit."""
    approval, result = await services(request).approvals.approve(
        client(request), request.match_info["id"])
    return json_response({"approval": public_view(approval, utcnow()), "result": result})


@routes.post("/v1/approvals/{id}/reject")
@roles("key_officer")
@documented(json_answer(200, "The request, rejected", APPROVAL), body=json_body(_REASON),
            body_required=False, errors=[409, 422])
async def reject(request: web.Request) -> web.Response:
    """Reject a pending request (its requester may withdraw it this way); ``{"reason"}``."""
    body: dict[str, Any] = await json_object(request) if request.body_exists else {}
    approval = await services(request).approvals.reject(
        client(request), request.match_info["id"], body.get("reason"))
    return json_response(public_view(approval, utcnow()))


def created(approval: dict[str, Any], status: int = 201) -> web.Response:
    """The answer to filing a request, pointing at where its decision will show."""
    response = json_response(public_view(approval, utcnow()), status=status)
    response.headers["Location"] = f"/v1/approvals/{approval['id']}"
    return response
