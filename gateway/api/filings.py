"""Filing endpoints: applications, materials, submission, local review."""

from __future__ import annotations

from aiohttp import web

from gateway.api import examples
from gateway.api.bodies import json_object, json_response, read_limited
from gateway.api.context import client, roles, services
from gateway.api.spec import (
    BOOLEAN,
    INTEGER,
    TEXT,
    TIME,
    Component,
    Query,
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
from gateway.filing.adapters import MAX_VALID_DAYS
from gateway.filing.materials import MATERIAL_KINDS, MAX_MATERIAL_BYTES
from gateway.filing.service import public_view
from gateway.filing.states import FilingAction, FilingStatus

routes = web.RouteTableDef()

_MATERIAL = obj({"content_type": TEXT, "size": INTEGER, "sha256": TEXT, "uploaded_at": TIME,
                 "encrypted": BOOLEAN}, optional=["encrypted"])
_PERSON = obj({"name": example(text(max_length=200), "张三"),
               "id_number": example(text(max_length=200), examples.RESIDENT_ID)})
FILING = Component("Filing", obj({
    "id": TEXT, "seal_id": TEXT, "action": one_of(FilingAction), "authority": TEXT,
    "status": one_of(FilingStatus),
    "materials": {"type": "object", "additionalProperties": _MATERIAL,
                  "propertyNames": one_of(MATERIAL_KINDS)},
    "created_at": TIME, "submitted_at": nullable(TIME), "reference": nullable(TEXT),
    "decision": nullable(obj({"outcome": one_of(["approved", "rejected"]), "comment": TEXT,
                              "decided_at": TIME,
                              "withdrawn": {**BOOLEAN, "description": "a rejection because the "
                                                                      "filing was withdrawn"}},
                             optional=["comment", "withdrawn"])),
    "receipt_number": nullable(TEXT),
    "applicant": obj({"name": TEXT, "phone": {**TEXT, "description": "masked"}}),
    "legal_representative": obj({"name": TEXT, "id_number": {**TEXT, "description": "masked"}}),
}, optional=["decision", "reference", "submitted_at", "receipt_number"]))
NEW_FILING = obj({
    "seal_id": text(max_length=200), "action": one_of(FilingAction),
    "authority": {**TEXT, "description": "an installed authority adapter; the configured "
                                         "default when left out"},
    "applicant": obj({"name": example(text(max_length=200), "李四"),
                      "phone": example(text(max_length=200), examples.PHONE)}),
    "legal_representative": _PERSON,
}, optional=["authority"])
# The material's type is read from its bytes (PDF, PNG or JPEG), so any label is taken.
MATERIAL_TYPES = ("application/pdf", "image/png", "image/jpeg", "application/octet-stream")


@routes.post("/v1/filings")
@roles("filer")
@documented(json_answer(201, "The filing, in draft", FILING), body=json_body(NEW_FILING),
            errors=[404, 409, 422])
async def create_filing(request: web.Request) -> web.Response:
    body = await json_object(request)
    filing = await services(request).filings.create(body, client(request).name)
    return json_response(public_view(filing), status=201)


@routes.get("/v1/filings")
@roles("filer", "reviewer", "auditor")
@documented(json_answer(200, "Filings, of one seal with seal_id",
                        obj({"filings": array(FILING)})), query=[Query("seal_id", TEXT)])
async def list_filings(request: web.Request) -> web.Response:
    filings = await services(request).filings.list(request.query.get("seal_id"))
    return json_response({"filings": [public_view(f) for f in filings]})


@routes.get("/v1/filings/{id}")
@roles("filer", "reviewer", "auditor")
@documented(json_answer(200, "The filing", FILING))
async def get_filing(request: web.Request) -> web.Response:
    return json_response(public_view(await services(request).filings.get(request.match_info["id"])))


@routes.put("/v1/filings/{id}/materials/{kind}")
@roles("filer")
@documented(json_answer(200, "The filing with the material", FILING),
            body={media: example({"type": "string", "format": "binary",
                                  "maxLength": MAX_MATERIAL_BYTES}, examples.PDF)
                  for media in MATERIAL_TYPES}, errors=[409])
async def put_material(request: web.Request) -> web.Response:
    body = await read_limited(request, MAX_MATERIAL_BYTES)
    filing = await services(request).filings.put_material(
        request.match_info["id"], request.match_info["kind"], body, client(request).name)
    return json_response(public_view(filing))


@routes.post("/v1/filings/{id}/submit")
@roles("filer")
@documented(json_answer(202, "The filing, with its authority", FILING), errors=[409, 422])
async def submit_filing(request: web.Request) -> web.Response:
    filing = await services(request).filings.submit(request.match_info["id"], client(request).name)
    return json_response(public_view(filing), status=202)


@routes.post("/v1/filings/{id}/review")
@roles("reviewer")
@documented(json_answer(200, "The filing, decided", FILING), body=json_body(obj({
    "decision": one_of(["approve", "reject"]), "comment": nullable(TEXT),
    "valid_days": nullable({**INTEGER, "minimum": 1, "maximum": MAX_VALID_DAYS}),
}, optional=["comment", "valid_days"])), errors=[409, 422])
async def review_filing(request: web.Request) -> web.Response:
    body = await json_object(request)
    filing = await services(request).filings.review(request.match_info["id"], body,
                                                    client(request).name)
    return json_response(public_view(filing))


@routes.post("/v1/filings/{id}/withdraw")
@roles("reviewer")
@documented(json_answer(200, "The filing, rejected", FILING),
            body=json_body(obj({"reason": text(max_length=200)})), errors=[409, 422])
async def withdraw_filing(request: web.Request) -> web.Response:
    """Withdraw a submitted filing: ``{"reason"}``; the authority is told first, then the
    filing is rejected and the seal returns to the status it had. 503 while the authority
    cannot be reached; 409 when it had decided already (its decision is applied). An
    authority that cannot be told (no withdrawal call, an answer of no use, an application
    that can no longer be handed over) is not waited for: the audit event says so."""
    body = await json_object(request)
    filing = await services(request).filings.withdraw(request.match_info["id"], body,
                                                      client(request).name)
    return json_response(public_view(filing))
