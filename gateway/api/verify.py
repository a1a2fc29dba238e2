"""POST /v1/verify: what a signed PDF, or a CMS signature with its content, proves; for anyone."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from gateway.api.bodies import (
    UnreadableJson,
    json_response,
    media_type,
    parse_json,
    read_limited,
)
from gateway.api.context import roles, services
from gateway.api.spec import (
    BASE64,
    BINARY,
    BOOLEAN,
    TEXT,
    array,
    documented,
    json_answer,
    nullable,
    obj,
)
from gateway.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from gateway.signing import check_pdf_header

routes = web.RouteTableDef()

VERIFICATION = obj({"valid": BOOLEAN, "signatures": array(obj({
    "signer": TEXT, "seal_id": TEXT, "signed_at": nullable(TEXT), "intact": BOOLEAN,
    "trusted": BOOLEAN, "level": nullable(TEXT), "kind": TEXT, "problems": array(TEXT),
}, optional=["seal_id", "kind"]))})
CMS_REQUEST = obj({"cms": {**BASE64, "description": "the DER CMS signature"},
                   "content": nullable({**BASE64, "description": "the signed content, when "
                                                                 "the signature is detached"})},
                  optional=["content"])


@routes.post("/v1/verify")
@roles()
@documented(json_answer(200, "What each signature proves", VERIFICATION),
            body={"application/pdf": BINARY, "application/octet-stream": BINARY,
                  "application/json": CMS_REQUEST}, errors=[422])
async def verify(request: web.Request) -> web.Response:
    """Every signature of a signed PDF (``application/pdf``), or of ``{"cms", "content"}``
    (base64, JSON): intact, trusted against the configured roots, level, and which seal."""
    kind = media_type(request)
    body = await read_limited(request)
    verifier = services(request).verifier
    if kind == "application/pdf" or (kind == "application/octet-stream"
                                     and body.lstrip()[:5] == b"%PDF-"):
        check_pdf_header(body)
        return json_response(await verifier.verify_pdf(body))
    if kind in ("application/json", ""):
        signature, content = _cms_request(body)
        return json_response(await verifier.verify_cms(signature, content))
    raise UnsupportedMediaType(
        f"send application/pdf or application/json, not {request.content_type}"
    )


def _cms_request(body: bytes) -> tuple[bytes, bytes | None]:
    try:
        value: Any = parse_json(body or b"null")
    except UnreadableJson as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationFailed.one("body", "must be a JSON object with cms and content")
    signature = _base64(value, "cms")
    content = None if value.get("content") is None else _base64(value, "content")
    if signature is None:
        raise ValidationFailed.one("cms", "is required: the DER CMS signature, base64")
    return signature, content


def _base64(value: dict[str, Any], name: str) -> bytes | None:
    raw = value.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValidationFailed.one(name, "must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed.one(name, "is not valid base64") from None
