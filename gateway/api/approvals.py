"""Dual-control endpoints: key officers file, read, approve and reject approval requests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.bodies import json_object, json_response
from gateway.api.context import client, roles, services
from gateway.clock import utcnow
from gateway.custody import public_view

routes = web.RouteTableDef()


@routes.post("/v1/approvals")
@roles("key_officer")
async def create_approval(request: web.Request) -> web.Response:
    """File a request (destroy_key, grant_seal, set_role, create_client) for a second officer."""
    body = await json_object(request)
    approval = await services(request).approvals.request(
        client(request), body.get("action"), body.get("params") or {})
    return created(approval)


@routes.get("/v1/approvals")
@roles("key_officer", "auditor")
async def list_approvals(request: web.Request) -> web.Response:
    """Approval requests, oldest first; ``status`` narrows them (e.g. ``pending``)."""
    approvals = await services(request).approvals.list(request.query.get("status") or None)
    return json_response({"approvals": approvals})


@routes.get("/v1/approvals/{id}")
@roles("key_officer", "auditor")
async def get_approval(request: web.Request) -> web.Response:
    """One approval request with its current status."""
    return json_response(await services(request).approvals.get(request.match_info["id"]))


@routes.post("/v1/approvals/{id}/approve")
@roles("key_officer")
async def approve(request: web.Request) -> web.Response:
    """Approve another officer's request; the action runs now, in the same commit."""
    approval, result = await services(request).approvals.approve(
        client(request), request.match_info["id"])
    return json_response({"approval": public_view(approval, utcnow()), "result": result})


@routes.post("/v1/approvals/{id}/reject")
@roles("key_officer")
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
