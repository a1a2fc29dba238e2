"""Detached signatures for internal apps: CMS over any content, and batches of digests.

``sign/cms`` never holds the content: the body is hashed chunk by chunk as it arrives, so a
file up to ``server.max_body_bytes`` costs one chunk of memory. Both answers name their
sealing receipt in the ``Sealgate-Receipt`` header, as ``sign/pdf`` does; the JSON answer of
``sign/hash`` also carries it as ``sealing_receipt``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.api import examples
from gateway.api.bodies import check_declared_size, json_object, json_response, next_chunk
from gateway.api.context import SETTINGS, client, roles, services
from gateway.api.signing import RECEIPT_HEADER, RECEIPT_HEADERS
from gateway.api.spec import (
    BASE64,
    BINARY,
    TEXT,
    Answer,
    Query,
    array,
    documented,
    example,
    json_answer,
    json_body,
    obj,
    one_of,
)
from gateway.errors import PayloadTooLarge, ValidationFailed
from gateway.hsm import hash_algorithm
from gateway.signing.cms import SUPPORTED_CMS_LEVELS
from gateway.signing.digests import decode_digests

routes = web.RouteTableDef()

CMS_CONTENT_TYPE = "application/pkcs7-signature"
HASH_ALGORITHM = {"type": "string", "pattern": "^[Ss][Hh][Aa](256|384|512)$",
                  "description": "sha256, sha384 or sha512, in any case"}


@routes.post("/v1/seals/{id}/sign/cms")
@roles("signer")
@documented(Answer(200, "The detached CAdES signature, DER", {CMS_CONTENT_TYPE: BINARY},
                   RECEIPT_HEADERS),
            query=[Query("level", one_of(sorted(SUPPORTED_CMS_LEVELS)),
                         "[signing] default_level when left out", empty_is_absent=False)],
            body={"application/octet-stream": BINARY, "*/*": BINARY}, errors=[409, 422])
async def sign_cms(request: web.Request) -> web.Response:
    """Detached CAdES signature (DER) over the body, which may be any bytes."""
    level = request.query.get("level", request.app[SETTINGS].signing.default_level)
    result = await services(request).sealing.sign_cms(
        client(request), request.match_info["id"], body_chunks(request), level)
    return web.Response(
        body=result.output, content_type=CMS_CONTENT_TYPE,
        headers={RECEIPT_HEADER: result.receipt_id,
                 "Content-Disposition": 'attachment; filename="signature.p7s"'},
    )


@routes.post("/v1/seals/{id}/sign/hash")
@roles("signer")
@documented(json_answer(200, "The signatures, in the order of the hashes", obj({
    "signatures": array(BASE64), "signature_algorithm": {**TEXT, "description": "an OID"},
    "certificate_chain": array({**BASE64, "description": "DER, leaf first"}),
    "sealing_receipt": TEXT,
}), RECEIPT_HEADERS), body=json_body(example(obj({
    "hash_algorithm": HASH_ALGORITHM, "hashes": array(BASE64, minItems=1),
}), {"hash_algorithm": "sha256", "hashes": [examples.SHA256_BASE64]})), errors=[409, 422])
async def sign_hash(request: web.Request) -> web.Response:
    """Sign a batch of SHA-256/384/512 digests; signatures come back in the same order."""
    body = await json_object(request)
    name = body.get("hash_algorithm")
    if not isinstance(name, str):
        raise ValidationFailed.one("hash_algorithm", "must be one of sha256, sha384, sha512")
    hash_name = hash_algorithm(name).name
    digests = decode_digests(body.get("hashes"), hash_name, field="hashes",
                             max_count=request.app[SETTINGS].signing.max_hash_batch)
    result = await services(request).sealing.sign_hashes(
        client(request), request.match_info["id"], hash_name, digests)
    response = json_response({
        "signatures": [_b64(s) for s in result.signatures],
        "signature_algorithm": result.signature_algorithm,
        "certificate_chain": [_b64(c) for c in result.certificate_chain],
        "sealing_receipt": result.receipt_id,
    })
    response.headers[RECEIPT_HEADER] = result.receipt_id
    return response


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body chunk by chunk, refusing (413) as soon as it passes the limit, even chunked."""
    limit = check_declared_size(request)
    size = 0
    while chunk := await next_chunk(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        yield chunk


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
