"""Key endpoints for security teams: generate in the HSM, CSR, certificate import, disable."""

from __future__ import annotations

from aiohttp import web

from gateway.api.bodies import json_object, json_response, read_limited
from gateway.api.context import client, roles, services
from gateway.errors import ValidationFailed
from gateway.keys.registry import public_view

routes = web.RouteTableDef()

MAX_CERTIFICATE_BYTES = 256 * 1024


@routes.post("/v1/keys")
@roles("key_officer")
async def create_key(request: web.Request) -> web.Response:
    body = await json_object(request)
    key = await services(request).keys.create(body.get("label", ""), body.get("algorithm"),
                                               client(request).name)
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
