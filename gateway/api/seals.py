"""Seal endpoints: create (with a rendered image by default), list within grants, image."""

from __future__ import annotations

from aiohttp import web

from gateway.api.bodies import json_object, json_response
from gateway.api.context import client, roles, services
from gateway.clock import utcnow
from gateway.seals.registry import public_view

routes = web.RouteTableDef()


@routes.post("/v1/seals")
@roles("filer")
async def create_seal(request: web.Request) -> web.Response:
    body = await json_object(request)
    seal = await services(request).seals.create(body, client(request).name)
    return json_response(public_view(seal, utcnow()), status=201)


@routes.get("/v1/seals")
@roles("filer", "signer", "auditor")
async def list_seals(request: web.Request) -> web.Response:
    now = utcnow()
    seals = await services(request).seals.list_for(client(request))
    return json_response({"seals": [public_view(s, now) for s in seals]})


@routes.get("/v1/seals/{id}")
@roles("filer", "signer", "auditor")
async def get_seal(request: web.Request) -> web.Response:
    seal = await services(request).seals.get_for(client(request), request.match_info["id"])
    return json_response(public_view(seal, utcnow()))


@routes.get("/v1/seals/{id}/image")
@roles("filer", "signer")
async def seal_image(request: web.Request) -> web.Response:
    seal = await services(request).seals.get_for(client(request), request.match_info["id"])
    png = await services(request).seals.image(seal["id"])
    return web.Response(body=png, content_type="image/png")
