"""CSC API v1 endpoints under ``/csc/v1/``, and the error bodies CSC clients expect.

Errors on ``/csc/`` paths leave as CSC API v1.0.4.0 §10 says: ``{"error", "error_description"}``
with 400 for anything wrong in the request, 401 (``invalid_token``) for a missing, unknown or
revoked bearer token, 403 (``access_denied``) for a token whose role may not sign, 429/503
(``temporarily_unavailable``, with Retry-After), 500 (``server_error``), 501 for a method
the service does not implement (no route under ``/csc/``), and 405 (with Allow) for an HTTP
method other than POST. pyHanko's client
only looks at the status (it raises for any non-2xx), so the bodies are for people and other
clients.

The translation is a middleware that rewrites the problem documents of ``/csc/`` answers: the
problem middleware stays the one place where exceptions become answers (with its logging and
metrics), authentication stays the one place that checks tokens and roles, and both work for
CSC unchanged. :func:`with_csc_errors` places it between the metrics and problem middlewares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.api import examples, middlewares
from gateway.api.bodies import json_object, json_response
from gateway.api.context import Handler, client, roles, services
from gateway.api.problems import PROBLEM_CONTENT_TYPE
from gateway.api.signing import RECEIPT_HEADER, RECEIPT_HEADERS
from gateway.api.spec import (
    BASE64,
    BOOLEAN,
    INTEGER,
    JSON,
    TEXT,
    Answer,
    Component,
    ErrorForm,
    SchemaLike,
    array,
    documented,
    example,
    json_answer,
    json_body,
    nullable,
    obj,
    one_of,
)

routes = web.RouteTableDef()

PREFIX = "/csc/"
_CSC_SLUG = "csc-"
_KEPT_HEADERS = ("Retry-After", "Allow")
_CERTIFICATES = ("none", "single", "chain")

CSC_ERROR = Component("CscError", {
    **obj({"error": TEXT, "error_description": TEXT}),
    "description": "An error as CSC API v1.0.4.0 §10 has it"})
_NAMED = {**TEXT, "minLength": 1}
_HASHES = array(example({**BASE64, "description": "a digest"}, examples.SHA256_BASE64),
                minItems=1)


CSC_ERRORS = ErrorForm(
    JSON, CSC_ERROR, lambda status: csc_error(status, "")[0],
    {400: "Anything wrong in the request: a missing, invalid or unsupported parameter, an "
          "unknown credential, a SAD that does not authorize these hashes (CSC §10.1)"})


def csc_documented(answer: Answer, body: SchemaLike) -> Callable[[Handler], Handler]:
    """A CSC method's mark: its JSON body and answer; its errors leave as CSC errors."""
    return documented(answer, body=json_body(body), body_required=False, errors=[400],
                      error_form=CSC_ERRORS)


@routes.post("/csc/v1/info")
@roles()
@csc_documented(json_answer(200, "The service", obj({
    "specs": TEXT, "name": TEXT, "logo": TEXT, "region": TEXT, "lang": TEXT,
    "description": TEXT, "authType": array(TEXT), "methods": array(TEXT)})),
    obj({"lang": {"description": "taken and ignored: the answer is in en-US"}}, required=[]))
async def csc_info(request: web.Request) -> web.Response:
    """CSC: the service, its specification version and the methods it implements."""
    await _body(request)  # its only parameter, lang, changes nothing; a broken body is 400
    return json_response(services(request).csc.info())


@routes.post("/csc/v1/credentials/list")
@roles("signer")
@csc_documented(json_answer(200, "The credential ids (seal ids)", obj({
    "credentialIDs": array(TEXT), "nextPageToken": TEXT}, optional=["nextPageToken"])),
    obj({"maxResults": nullable({**INTEGER, "minimum": 1}),
         "pageToken": nullable({"type": "string", "pattern": "^[0-9]+$"})}, required=[]))
async def csc_credentials_list(request: web.Request) -> web.Response:
    """CSC: the credentials (seals granted for CSC signing) of the token's client."""
    body = await _body(request)
    return json_response(await services(request).csc.list_credentials(client(request), body))


@routes.post("/csc/v1/credentials/info")
@roles("signer")
@csc_documented(json_answer(200, "The credential", obj({
    "description": TEXT, "key": obj({"status": TEXT, "algo": array(TEXT), "len": INTEGER}),
    "cert": {"type": "object"}, "authMode": TEXT, "SCAL": TEXT, "multisign": INTEGER,
    "lang": TEXT})),
    obj({"credentialID": _NAMED, "certificates": one_of(_CERTIFICATES),
         "certInfo": BOOLEAN, "authInfo": BOOLEAN}, required=["credentialID"]))
async def csc_credentials_info(request: web.Request) -> web.Response:
    """CSC: a credential's key algorithms, certificates, SCAL and batch size."""
    body = await _body(request)
    return json_response(await services(request).csc.credential_info(client(request), body))


@routes.post("/csc/v1/credentials/authorize")
@roles("signer")
@csc_documented(json_answer(200, "The SAD", obj({"SAD": TEXT, "expiresIn": INTEGER})),
                obj({"credentialID": _NAMED,
                     "numSignatures": {**INTEGER, "minimum": 1}, "hash": _HASHES}))
async def csc_credentials_authorize(request: web.Request) -> web.Response:
    """CSC: signature activation data (SAD) bound to the credential and the given hashes."""
    body = await _body(request)
    return json_response(await services(request).csc.authorize(client(request), body))


@routes.post("/csc/v1/signatures/signHash")
@roles("signer")
@csc_documented(json_answer(200, "The signatures, in the order of the hashes",
                            obj({"signatures": array(BASE64)}), RECEIPT_HEADERS),
                obj({"credentialID": _NAMED, "SAD": _NAMED, "hash": _HASHES, "signAlgo": _NAMED,
                     "hashAlgo": nullable(TEXT)},
                    optional=["hashAlgo"]))
async def csc_signatures_sign_hash(request: web.Request) -> web.Response:
    """CSC: sign the hashes a SAD authorizes; the sealing receipt is in Sealgate-Receipt."""
    body = await _body(request)
    answer, receipt_id = await services(request).csc.sign_hash(client(request), body)
    response = json_response(answer)
    response.headers[RECEIPT_HEADER] = receipt_id
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request; an empty body is an empty object (``info`` allows it)."""
    if not request.body_exists:
        return {}
    return await json_object(request)


def csc_error(status: int, slug: str) -> tuple[int, str]:
    """The CSC status and error code for a problem's status and type slug."""
    if slug.startswith(_CSC_SLUG):
        return 400, slug[len(_CSC_SLUG):].replace("-", "_")
    if status == 401:
        return 401, "invalid_token"
    if status == 403:
        return 403, "access_denied"
    if status in (429, 503):
        return status, "temporarily_unavailable"
    if status == 405:
        # The HTTP method, not a parameter: 405 with its Allow header, as HTTP has it.
        return 405, "invalid_request"
    if status == 404:
        # Handlers here never answer 404 (an unknown credential is a 400), so this is a
        # path without a route: a method the service does not implement (§10.1).
        return 501, "invalid_request"
    if status >= 500:
        return 500, "server_error"
    # §10.1: unsupported, invalid or missing parameters are all 400.
    return 400, "invalid_request"


@web.middleware
async def csc_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Re-express the problem+json answers of ``/csc/`` paths as CSC error objects."""
    response = await handler(request)
    if (
        not request.path.startswith(PREFIX)
        or not isinstance(response, web.Response)
        or response.content_type != PROBLEM_CONTENT_TYPE
        or response.text is None
    ):
        return response
    problem = json.loads(response.text)
    status, error = csc_error(response.status, str(problem.get("type", "")).rsplit("/", 1)[-1])
    answer = json_response({"error": error, "error_description": problem.get("detail", "")},
                           status=status)
    for name in _KEPT_HEADERS:
        if name in response.headers:
            answer.headers[name] = response.headers[name]
    if status == 401:
        # RFC 6750 §3: a bearer-token challenge accompanies every 401.
        answer.headers["WWW-Authenticate"] = f'Bearer error="{error}"'
    return answer


def with_csc_errors(stack: Sequence[Any]) -> list[Any]:
    """``stack`` with the CSC error middleware just outside the problem middleware, so that
    the metrics middleware (outside it) counts the status the client really gets."""
    at = list(stack).index(middlewares.problem_middleware)
    return [*stack[:at], csc_error_middleware, *stack[at:]]
