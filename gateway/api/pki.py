"""GET /pki/crl/dev-ca.crl: the development CA's current CRL, where its certificates point."""

from __future__ import annotations

import asyncio

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.api.context import roles, services
from gateway.api.spec import BINARY, Answer, documented
from gateway.errors import NotFound
from gateway.pki.devca import CRL_PATH

routes = web.RouteTableDef()


@routes.get(CRL_PATH)
@roles()
@documented(Answer(200, "The CRL, DER", {"application/pkix-crl": BINARY}), errors=[404])
async def dev_ca_crl(request: web.Request) -> web.Response:
    """The dev CA's CRL (DER, RFC 5280), freshly signed; 404 where no dev CA is set up."""
    ca = services(request).dev_ca
    if ca is None:
        raise NotFound("this gateway has no development CA; run `sealgate init`")
    crl = await asyncio.get_running_loop().run_in_executor(None, ca.crl)
    return web.Response(
        body=crl.public_bytes(Encoding.DER), content_type="application/pkix-crl",
        # Validators may cache it until a minute has passed; it stays valid much longer.
        headers={"Cache-Control": "public, max-age=60"},
    )
