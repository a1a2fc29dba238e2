"""Key endpoints for security teams: generate in the HSM, CSR, certificate import, disable,
destroy (through dual control), and moving a seal to a new key."""

from __future__ import annotations

from aiohttp import web

from gateway.api import approvals
from gateway.api.bodies import json_object, json_response, read_limited
from gateway.api.context import client, roles, services
from gateway.api.seals import SEAL
from gateway.api.spec import (
    INTEGER,
    TEXT,
    TIME,
    Answer,
    Component,
    Schema,
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
from gateway.custody import Action
from gateway.errors import ValidationFailed
from gateway.hsm import KeyAlgorithm
from gateway.keys.registry import public_view
from gateway.pki.csr import PRINTABLE, PRINTABLE_FIELDS, SUBJECT_FIELDS, UPPER_BOUNDS
from gateway.seals import registry as seal_registry

routes = web.RouteTableDef()

MAX_CERTIFICATE_BYTES = 256 * 1024

KEY = Component("Key", obj({
    "id": TEXT, "label": TEXT, "algorithm": one_of(KeyAlgorithm), "public_key_pem": TEXT,
    "status": one_of(["enabled", "disabled", "destroyed"]), "created_at": TIME,
    "certificate": nullable(obj({"serial": TEXT, "subject": TEXT, "issuer": TEXT,
                                 "sha256": TEXT, "not_before": TIME, "not_after": TIME})),
    "usage_limit": nullable({**INTEGER, "minimum": 1}),
}))
NEW_KEY = obj({"label": text(max_length=100), "algorithm": one_of(KeyAlgorithm),
               "usage_limit": nullable({**INTEGER, "minimum": 1})}, optional=["usage_limit"])


def _subject_field(name: str) -> Schema:
    """What csr.subject_name takes for one subject field: a blank one is left out."""
    if name == "country":
        return {"type": "string", "pattern": "^([A-Za-z]{2})?$"}
    if name in PRINTABLE_FIELDS:
        return {**text(min_length=0, max_length=UPPER_BOUNDS[name]), "pattern": PRINTABLE}
    return text(min_length=1 if name == "common_name" else 0, max_length=UPPER_BOUNDS[name])


SUBJECT = {**obj({name: _subject_field(name) for name in SUBJECT_FIELDS},
                 required=["common_name"]), "additionalProperties": False}
# The chain is read as PEM whatever the type says.
PEM_CHAIN = {"application/pem-certificate-chain": TEXT, "application/x-pem-file": TEXT,
             "text/plain": TEXT}


@routes.post("/v1/keys")
@roles("key_officer")
@documented(json_answer(201, "The key, generated in the HSM", KEY), body=json_body(NEW_KEY),
            errors=[422])
async def create_key(request: web.Request) -> web.Response:
    body = await json_object(request)
    key = await services(request).keys.create(body.get("label", ""), body.get("algorithm"),
                                               client(request).name, body.get("usage_limit"))
    return json_response(public_view(key), status=201)


@routes.get("/v1/keys")
@roles("key_officer", "auditor")
@documented(json_answer(200, "Every key", obj({"keys": array(KEY)})))
async def list_keys(request: web.Request) -> web.Response:
    keys = await services(request).keys.list()
    return json_response({"keys": [public_view(k) for k in keys]})


@routes.get("/v1/keys/{id}")
@roles("key_officer", "auditor")
@documented(json_answer(200, "The key", KEY))
async def get_key(request: web.Request) -> web.Response:
    return json_response(public_view(await services(request).keys.get(request.match_info["id"])))


@routes.post("/v1/keys/{id}/csr")
@roles("key_officer")
@documented(Answer(200, "The PKCS#10 request (PEM), signed inside the HSM",
                   {"application/pkcs10": TEXT}),
            body=json_body(obj({"subject": SUBJECT})), errors=[409, 422])
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
@documented(json_answer(200, "The key with its certificate", KEY), body=PEM_CHAIN,
            errors=[409, 422])
async def import_certificate(request: web.Request) -> web.Response:
    pem = await read_limited(request, MAX_CERTIFICATE_BYTES)
    key = await services(request).keys.import_certificate(request.match_info["id"], pem,
                                                          client(request).name)
    return json_response(public_view(key))


@routes.post("/v1/keys/{id}/disable")
@roles("key_officer")
@documented(json_answer(200, "The key, disabled", KEY), errors=[409])
async def disable_key(request: web.Request) -> web.Response:
    key = await services(request).keys.disable(request.match_info["id"], client(request).name)
    return json_response(public_view(key))


@routes.post("/v1/keys/{id}/destroy")
@roles("key_officer")
@documented(json_answer(202, "The approval request filed", approvals.APPROVAL,
                        approvals.LOCATION), errors=[409, 422])
async def destroy_key(request: web.Request) -> web.Response:
    """File the request to destroy a disabled key; it happens once a second officer approves."""
    approval = await services(request).approvals.request(
        client(request), Action.DESTROY_KEY, {"key_id": request.match_info["id"]})
    return approvals.created(approval, status=202)


@routes.get("/v1/keys/{id}/usage")
@roles("key_officer", "auditor")
@documented(json_answer(200, "Signatures made against the limit", obj({
    "usage_limit": nullable(INTEGER), "usage_count": nullable(INTEGER)})))
async def key_usage(request: web.Request) -> web.Response:
    """Signatures made so far against the key's usage limit (both null without a limit)."""
    svc = services(request)
    key = await svc.keys.get(request.match_info["id"])
    return json_response({"usage_limit": key.get("usage_limit"),
                          "usage_count": await svc.keys.usage(key)})


@routes.post("/v1/seals/{id}/rotate-key")
@roles("key_officer")
@documented(json_answer(200, "The seal on its new key", SEAL),
            body=json_body(obj({"key_id": text(max_length=64)})), errors=[409, 422])
async def rotate_seal_key(request: web.Request) -> web.Response:
    """Move a seal to another key with a valid certificate; the next signature uses it."""
    body = await json_object(request)
    seal = await services(request).seals.rotate_key(request.match_info["id"], body.get("key_id"),
                                                    client(request).name)
    return json_response(seal_registry.public_view(seal, utcnow()))
