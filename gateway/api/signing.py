"""Signing endpoints for internal apps; each answer names its sealing receipt."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from aiohttp import web
from aiohttp.payload import BufferedReaderPayload

from gateway.api import examples
from gateway.api.bodies import json_response, media_type, read_or_spool
from gateway.api.context import SETTINGS, client, roles, services
from gateway.api.spec import (
    BINARY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    TEXT,
    TIME,
    Answer,
    Component,
    Query,
    documented,
    example,
    json_answer,
    obj,
    one_of,
)
from gateway.errors import NotFound, UnsupportedMediaType, ValidationFailed
from gateway.signing import PdfSealOptions, Placement, check_pdf_header
from gateway.signing.pdf import SignatureLevel

# Clients that do not name the type, or send any bytes as such, are sealed as well; a type
# that says something else (text/plain, application/json) is a mistake to point out.
PDF_MEDIA_TYPES = ("application/pdf", "application/octet-stream", "")
routes = web.RouteTableDef()

RECEIPT_HEADER = "Sealgate-Receipt"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
N = TypeVar("N", int, float)

RECEIPT_HEADERS = {RECEIPT_HEADER: "The id of the sealing receipt (GET /v1/sealing-receipts/{id})"}
SEALING_RECEIPT = Component("SealingReceipt", obj({
    "id": TEXT, "format": TEXT, "seal_id": TEXT, "seal_name": TEXT, "key_id": TEXT,
    "certificate_sha256": TEXT, "signed_at": TIME, "client": TEXT, "audit_seq": INTEGER,
    "document_sha256_before": TEXT, "document_sha256_after": TEXT,
    "signature": {**TEXT, "description": "compact JWS, detached payload, as receipts"},
}, optional=["document_sha256_before", "document_sha256_after"]))
PDF_QUERY = (
    Query("page", {**INTEGER, "minimum": 1}, "1-based; the last page when left out"),
    Query("x", NUMBER, "points from the left; bottom right when left out"),
    Query("y", NUMBER, "points from the bottom"),
    Query("width", {**NUMBER, "exclusiveMinimum": 0}, "points"),
    Query("level", one_of(SignatureLevel), "PAdES level; [signing] default_level when left out",
          empty_is_absent=False),
    Query("reason", TEXT), Query("location", TEXT),
    Query("visible", {**BOOLEAN, "default": True}, "false for an invisible signature"),
)


@routes.post("/v1/seals/{id}/sign/pdf")
@roles("signer")
@documented(Answer(200, "The sealed PDF", {"application/pdf": BINARY}, RECEIPT_HEADERS),
            query=PDF_QUERY, body={"application/pdf": example(BINARY, examples.PDF),
                                   "application/octet-stream": BINARY},
            errors=[409, 422])
async def sign_pdf(request: web.Request) -> web.Response:
    if media_type(request) not in PDF_MEDIA_TYPES:
        raise UnsupportedMediaType(f"send the PDF as application/pdf, not {request.content_type}")
    options = pdf_options(request)
    document = await read_or_spool(request)
    if isinstance(document, bytes):
        if not document:
            raise ValidationFailed.one("body", "is empty; send the PDF to seal")
        check_pdf_header(document)
        result = await services(request).sealing.seal_pdf(
            client(request), request.match_info["id"], document, options)
        return web.Response(body=result.output, content_type="application/pdf",
                            headers={RECEIPT_HEADER: result.receipt_id})
    try:
        check_pdf_header(document.head)
        receipt_id = await services(request).sealing.seal_pdf_file(
            client(request), request.match_info["id"], document.file, document.size,
            document.sha256, options)
        document.file.seek(0)
    except BaseException:
        document.close()
        raise
    # A large document is sealed in its spool file and streamed from there; aiohttp closes
    # the file once it is sent, and the unnamed file is then gone.
    return web.Response(body=BufferedReaderPayload(document.file, filename=None),
                        content_type="application/pdf", headers={RECEIPT_HEADER: receipt_id})


@routes.get("/v1/sealing-receipts/{id}")
@roles("signer", "auditor")
@documented(json_answer(200, "What was sealed, signed by the platform", SEALING_RECEIPT))
async def sealing_receipt(request: web.Request) -> web.Response:
    svc = services(request)
    receipt = await svc.sealing.sealing_receipt(request.match_info["id"])
    caller = client(request)
    if caller.role == "signer" and (
        receipt["client"] != caller.name or not caller.may_use_seal(receipt["seal_id"])
    ):
        # A signer sees its own receipts only; others' do not exist for it.
        raise NotFound(f"no sealing receipt with id {request.match_info['id']}")
    return json_response({**receipt, "signature": await svc.platform.sign(receipt)})


def pdf_options(request: web.Request) -> PdfSealOptions:
    """Query parameters of ``sign/pdf`` (API.md), each checked with a 422 naming it."""
    q = request.query
    settings = request.app[SETTINGS].signing
    return PdfSealOptions(
        placement=Placement(
            page=_number(q, "page", int), x=_number(q, "x", float), y=_number(q, "y", float),
            width=_number(q, "width", float),
        ),
        reason=q.get("reason") or None,
        location=q.get("location") or None,
        visible=_boolean(q, "visible", True),
        level=q.get("level", settings.default_level),
    )


def _number(query: Mapping[str, str], name: str, kind: Callable[[str], N]) -> N | None:
    raw = query.get(name, "")
    if raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        whole = "whole " if kind is int else ""
        raise ValidationFailed.one(name, f"must be a {whole}number") from None


def _boolean(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name, "").lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValidationFailed.one(name, "must be true or false")
