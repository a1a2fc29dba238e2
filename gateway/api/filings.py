"""Filing endpoints: applications, materials, submission, local review."""

from __future__ import annotations

from aiohttp import web

from gateway.api.bodies import json_object, json_response, read_limited
from gateway.api.context import client, roles, services
from gateway.filing.service import MAX_MATERIAL_BYTES, public_view

routes = web.RouteTableDef()


@routes.post("/v1/filings")
@roles("filer")
async def create_filing(request: web.Request) -> web.Response:
    body = await json_object(request)
    filing = await services(request).filings.create(body, client(request).name)
    return json_response(public_view(filing), status=201)


@routes.get("/v1/filings")
@roles("filer", "reviewer", "auditor")
async def list_filings(request: web.Request) -> web.Response:
    filings = await services(request).filings.list(request.query.get("seal_id"))
    return json_response({"filings": [public_view(f) for f in filings]})


@routes.get("/v1/filings/{id}")
@roles("filer", "reviewer", "auditor")
async def get_filing(request: web.Request) -> web.Response:
    return json_response(public_view(await services(request).filings.get(request.match_info["id"])))


@routes.put("/v1/filings/{id}/materials/{kind}")
@roles("filer")
async def put_material(request: web.Request) -> web.Response:
    body = await read_limited(request, MAX_MATERIAL_BYTES)
    filing = await services(request).filings.put_material(
        request.match_info["id"], request.match_info["kind"], body, client(request).name)
    return json_response(public_view(filing))


@routes.post("/v1/filings/{id}/submit")
@roles("filer")
async def submit_filing(request: web.Request) -> web.Response:
    filing = await services(request).filings.submit(request.match_info["id"], client(request).name)
    return json_response(public_view(filing), status=202)


@routes.post("/v1/filings/{id}/review")
@roles("reviewer")
async def review_filing(request: web.Request) -> web.Response:
    body = await json_object(request)
    filing = await services(request).filings.review(request.match_info["id"], body,
                                                    client(request).name)
    return json_response(public_view(filing))


@routes.post("/v1/filings/{id}/withdraw")
@roles("reviewer")
async def withdraw_filing(request: web.Request) -> web.Response:
    """Withdraw a submitted filing: ``{"reason"}``; the authority is told first, then the
    filing is rejected and the seal returns to the status it had. 503 while the authority
    cannot be reached; 409 when it had decided already (its decision is applied)."""
    body = await json_object(request)
    filing = await services(request).filings.withdraw(request.match_info["id"], body,
                                                      client(request).name)
    return json_response(public_view(filing))
