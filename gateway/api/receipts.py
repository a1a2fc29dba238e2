"""Receipt endpoints: the signed JSON and PDF, the platform certificate, and verification."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.bodies import (
    UnreadableJson,
    json_response,
    media_type,
    parse_json,
    read_limited,
)
from gateway.api.context import client, roles, services
from gateway.api.spec import (
    ANY_OBJECT,
    BINARY,
    BOOLEAN,
    TEXT,
    TIME,
    Answer,
    Component,
    array,
    documented,
    json_answer,
    nullable,
    obj,
)
from gateway.clock import utcnow
from gateway.errors import BadRequest, NotFound, UnsupportedMediaType, ValidationFailed

routes = web.RouteTableDef()

NUMBER = r"{number:[A-Za-z0-9-]{1,64}}"
MAX_RECEIPT_BYTES = 8 * 1024 * 1024

RECEIPT = Component("Receipt", {**obj({
    "number": TEXT, "authority": obj({"id": TEXT, "name": TEXT}), "authority_reference": TEXT,
    "action": TEXT, "seal_status": TEXT,
    "seal": obj({"id": TEXT, "code": TEXT, "name": TEXT, "type": TEXT}),
    "organization": obj({"name": TEXT, "uscc": TEXT}),
    "legal_representative": obj({"name": TEXT, "id_type": TEXT, "id_number_masked": TEXT}),
    "valid_from": nullable(TIME), "valid_to": nullable(TIME), "issued_at": TIME,
    "certificate": ANY_OBJECT, "seal_image": ANY_OBJECT, "application_id": TEXT,
    "supersedes": nullable(TEXT),
    "signature": {**TEXT, "description": "compact JWS with detached payload (RFC 7515 App. F) "
                                         "over the JCS form of the rest"},
}, required=["number", "authority", "action", "seal_status", "seal", "organization",
             "issued_at", "signature"]), "description": "A filing receipt (DOMAIN.md §2)"})
# Any object is checked (and found invalid when it is no receipt), so any object is taken.
RECEIPT_TO_CHECK = {**ANY_OBJECT, "description": "a receipt, as GET /v1/receipts/{number} "
                                                 "gives it"}
RECEIPT_CHECK = obj({
    "valid": BOOLEAN, "status": TEXT, "receipt_number": nullable(TEXT),
    "checks": array(obj({"name": TEXT, "ok": BOOLEAN, "detail": TEXT})),
}, optional=["receipt_number"])


@routes.get(f"/v1/receipts/{NUMBER}")
@roles("filer", "auditor", "signer")
@documented(json_answer(200, "The receipt, signed by the platform", RECEIPT))
async def get_receipt(request: web.Request) -> web.Response:
    return json_response(await _receipt_for_caller(request))


async def _receipt_for_caller(request: web.Request) -> dict[str, Any]:
    """The receipt; for a signer only that of a seal it was granted: others' do not exist
    for it (a receipt names the organisation and its legal representative, and receipt
    numbers follow each other)."""
    number = request.match_info["number"]
    receipt = await services(request).receipts.get(number)
    caller = client(request)
    if caller.role == "signer" and not caller.may_use_seal(str(receipt["seal"]["id"])):
        raise NotFound(f"no receipt numbered {number}")
    return receipt


@routes.get(f"/v1/receipts/{NUMBER}.pdf")
@roles("filer", "auditor", "signer")
@documented(Answer(200, "The receipt as a PAdES-signed PDF", {"application/pdf": BINARY}))
async def get_receipt_pdf(request: web.Request) -> web.Response:
    await _receipt_for_caller(request)
    pdf = await services(request).receipts.pdf(request.match_info["number"])
    return web.Response(
        body=pdf,
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="receipt-{request.match_info["number"]}.pdf"'
        },
    )


@routes.post("/v1/receipts/verify")
@roles()
@documented(json_answer(200, "What the checks found", RECEIPT_CHECK),
            body={"application/json": RECEIPT_TO_CHECK, "application/pdf": BINARY},
            errors=[422])
async def verify_receipt(request: web.Request) -> web.Response:
    body = await read_limited(request, MAX_RECEIPT_BYTES)
    kind = media_type(request)
    receipts = services(request).receipts
    if kind == "application/pdf" or body.lstrip()[:5] == b"%PDF-":
        result = await receipts.verify_pdf(body, utcnow())
    elif kind in ("application/json", ""):
        try:
            document = parse_json(body)
        except UnreadableJson as exc:
            raise BadRequest(f"the body is neither a receipt PDF nor valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValidationFailed.one("body", "must be a receipt JSON object")
        result = await receipts.verify_json(document, utcnow())
    else:
        raise UnsupportedMediaType("send the receipt as application/json or application/pdf")
    return json_response(result)


@routes.get("/v1/platform/certificate")
@roles()
@documented(Answer(200, "The receipt-signing certificate chain, PEM",
                   {"application/x-pem-file": TEXT}))
async def platform_certificate(request: web.Request) -> web.Response:
    pem = await services(request).platform.certificate_pem()
    return web.Response(body=pem, content_type="application/x-pem-file")
