"""Seal endpoints: create (with a rendered image by default), list within grants, image."""

from __future__ import annotations

from aiohttp import web

from gateway.api import examples
from gateway.api.bodies import json_object, json_response
from gateway.api.context import client, roles, services
from gateway.api.spec import (
    BASE64,
    NUMBER,
    TEXT,
    TIME,
    Answer,
    Component,
    array,
    documented,
    example,
    json_answer,
    json_body,
    nullable,
    obj,
    one_of,
    text,
)
from gateway.clock import utcnow
from gateway.filing.states import EXPIRED, SealStatus
from gateway.seals.image import SEAL_TYPES
from gateway.seals.registry import public_view

routes = web.RouteTableDef()

ORGANIZATION = obj({"name": example(text(max_length=100), "示例科技有限公司"),
                    "uscc": example(text(max_length=18), examples.USCC)})
SEAL = Component("Seal", obj({
    "id": TEXT, "name": TEXT, "type": one_of(SEAL_TYPES), "seal_code": TEXT,
    "organization": ORGANIZATION, "key_id": TEXT,
    "status": one_of([*(s.value for s in SealStatus), EXPIRED]),
    "valid_from": nullable(TIME), "valid_to": nullable(TIME),
    "receipt_number": nullable(TEXT), "image_sha256": TEXT,
    "image_size_mm": obj({"width": NUMBER, "height": NUMBER}), "created_at": TIME,
    "key_history": array(obj({"key_id": TEXT, "certificate_sha256": TEXT,
                              "replaced_at": TIME})),
}, optional=["key_history"]))
NEW_SEAL = obj({
    "name": example(text(max_length=64), "合同专用章"), "type": one_of(SEAL_TYPES),
    "organization": ORGANIZATION,
    "key_id": text(max_length=64),
    "image_png": nullable(example({**BASE64, "contentMediaType": "image/png",
                                   "description": "without it (or null), a standard round seal "
                                                  "image is rendered"},
                                  examples.SEAL_PNG_BASE64)),
}, optional=["image_png"])


@routes.post("/v1/seals")
@roles("filer")
@documented(json_answer(201, "The seal, in draft", SEAL), body=json_body(NEW_SEAL),
            errors=[404, 409, 422])
async def create_seal(request: web.Request) -> web.Response:
    body = await json_object(request)
    seal = await services(request).seals.create(body, client(request).name)
    return json_response(public_view(seal, utcnow()), status=201)


@routes.get("/v1/seals")
@roles("filer", "signer", "auditor")
@documented(json_answer(200, "The seals this client may see", obj({"seals": array(SEAL)})))
async def list_seals(request: web.Request) -> web.Response:
    now = utcnow()
    seals = await services(request).seals.list_for(client(request))
    return json_response({"seals": [public_view(s, now) for s in seals]})


@routes.get("/v1/seals/{id}")
@roles("filer", "signer", "auditor")
@documented(json_answer(200, "The seal", SEAL))
async def get_seal(request: web.Request) -> web.Response:
    seal = await services(request).seals.get_for(client(request), request.match_info["id"])
    return json_response(public_view(seal, utcnow()))


@routes.get("/v1/seals/{id}/image")
@roles("filer", "signer")
@documented(Answer(200, "The seal image", {"image/png": {}}))
async def seal_image(request: web.Request) -> web.Response:
    seal = await services(request).seals.get_for(client(request), request.match_info["id"])
    png = await services(request).seals.image(seal["id"])
    return web.Response(body=png, content_type="image/png")
