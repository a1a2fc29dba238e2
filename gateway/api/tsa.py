"""POST /tsa: the gateway's RFC 3161 time-stamp authority over HTTP (RFC 3161 §3.4)."""

from __future__ import annotations

from aiohttp import web

from gateway.api.bodies import media_type, read_limited
from gateway.api.context import roles, services
from gateway.api.spec import BINARY, Answer, documented
from gateway.errors import UnsupportedMediaType
from gateway.settings import Settings
from gateway.signing.tsa import TIMESTAMP_QUERY, TIMESTAMP_REPLY

routes = web.RouteTableDef()

# A TimeStampReq is a digest, a nonce and a few flags: a few hundred bytes at most.
MAX_QUERY_BYTES = 16 * 1024


def _anonymous_allowed(settings: Settings) -> bool:
    return settings.tsa.allow_anonymous


@routes.post("/tsa")
@roles("signer", open_when=_anonymous_allowed)
@documented(Answer(200, "A DER TimeStampResp; a refused query is one with status rejection",
                   {TIMESTAMP_REPLY: BINARY}),
            body={TIMESTAMP_QUERY: {**BINARY, "maxLength": MAX_QUERY_BYTES}})
async def timestamp(request: web.Request) -> web.Response:
    """RFC 3161 time-stamp: a DER TimeStampReq in, a DER TimeStampResp out (key in the HSM).

    A query the TSA will not stamp (unsupported hash, malformed, other policy) is answered
    with a TimeStampResp whose status is rejection and whose failInfo says why, as RFC 3161
    clients expect; only a body that is not a time-stamp query at all is an HTTP error.
    """
    if media_type(request) != TIMESTAMP_QUERY:
        raise UnsupportedMediaType(f"send {TIMESTAMP_QUERY}, not {request.content_type}")
    query = await read_limited(request, MAX_QUERY_BYTES)
    reply = await services(request).timestamps.respond(query)
    return web.Response(body=reply, content_type=TIMESTAMP_REPLY)
