"""Key endpoints for security teams: generate in the HSM, CSR, certificate import, disable,
destroy (through dual control), and moving a seal to a new key."""

from __future__ import annotations

from aiohttp import web

from gateway.api import approvals
from gateway.api.bodies import json_object, json_response, read_limited
from gateway.api.context import client, roles, services
from gateway.clock import utcnow
from gateway.custody import Action
from gateway.errors import ValidationFailed
from gateway.keys.registry import public_view
from gateway.seals import registry as seal_registry

routes = web.RouteTableDef()

MAX_CERTIFICATE_BYTES = 256 * 1024


@routes.post("/v1/keys")
@roles("key_officer")
async def create_key(request: web.Request) -> web.Response:
    body = await json_object(request)
    key = await services(request).keys.create(body.get("label", ""), body.get("algorithm"),
                                               client(request).name, body.get("usage_limit"))
    return json_response(public_view(key), status=201)


@routes.get("/v1/keys")
@roles("key_officer", "auditor")
async def list_keys(request: web.Request) -> web.Response:
    keys = await services(request).keys.list()
    return json_response({"keys": [public_view(k) for k in keys]})


@routes.get("/v1/keys/{id}")
@roles("key_officer", "auditor")
async def get_key(request: web.Request) -> web.Response:
    return json_response(public_view(await services(request).keys.get(request.match_info["id"])))


@routes.post("/v1/keys/{id}/csr")
@roles("key_officer")
async def create_csr(request: web.Request) -> web.Response:
    body = await json_object(request)
    subject = body.get("subject")
    if not isinstance(subject, dict):
        raise ValidationFailed.one("subject", "must be an object with common_name, ...")
    pem = await services(request).keys.csr(request.match_info["id"], subject,
                                           client(request).name)
    return web.Response(body=pem, content_type="application/pkcs10")


@routes.put("/v1/keys/{id}/certificate")
@roles("key_officer")
async def import_certificate(request: web.Request) -> web.Response:
    pem = await read_limited(request, MAX_CERTIFICATE_BYTES)
    key = await services(request).keys.import_certificate(request.match_info["id"], pem,
                                                          client(request).name)
    return json_response(public_view(key))


@routes.post("/v1/keys/{id}/disable")
@roles("key_officer")
async def disable_key(request: web.Request) -> web.Response:
    key = await services(request).keys.disable(request.match_info["id"], client(request).name)
    return json_response(public_view(key))


@routes.post("/v1/keys/{id}/destroy")
@roles("key_officer")
async def destroy_key(request: web.Request) -> web.Response:
    """File the request to destroy a disabled key; it happens once a second officer approves."""
    approval = await services(request).approvals.request(
        client(request), Action.DESTROY_KEY, {"key_id": request.match_info["id"]})
    return approvals.created(approval, status=202)


@routes.get("/v1/keys/{id}/usage")
@roles("key_officer", "auditor")
async def key_usage(request: web.Request) -> web.Response:
    """Signatures made so far against the key's usage limit (both null without a limit)."""
    svc = services(request)
    key = await svc.keys.get(request.match_info["id"])
    return json_response({"usage_limit": key.get("usage_limit"),
                          "usage_count": await svc.keys.usage(key)})


@routes.post("/v1/seals/{id}/rotate-key")
@roles("key_officer")
async def rotate_seal_key(request: web.Request) -> web.Response:
    """Move a seal to another key with a valid certificate; the next signature uses it."""
    body = await json_object(request)
    seal = await services(request).seals.rotate_key(request.match_info["id"], body.get("key_id"),
                                                    client(request).name)
    return json_response(seal_registry.public_view(seal, utcnow()))
