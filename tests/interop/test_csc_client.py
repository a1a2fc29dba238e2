"""pyHanko's own CSC client, unpatched, seals PDFs through the gateway's CSC API v1.

The client is pyHanko's ``CSCSigner`` with the authorization manager its documentation asks
users to write: it calls ``credentials/authorize`` for a SAD pinned to the hashes about to be
signed (the gateway's credentials are SCAL 2). The sealed PDFs are then checked by pyHanko's
validator (trusting only the dev CA) and by poppler's pdfsig.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers.csc_signer import (
    CSCAuthorizationInfo,
    CSCAuthorizationManager,
    CSCCredentialInfo,
    CSCServiceSessionInfo,
    CSCSigner,
    PrefetchedSADAuthorizationManager,
    fetch_certs_in_csc_credential,
)

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.seals.sealing import SEALING_RECEIPT
from gateway.settings import Settings
from gateway.signing.seal_key import to_asn1_certificate
from tests import pdf_samples
from tests.api.conftest import World
from tests.interop.test_pdf_sealing import pdfsig_results, validate

pytestmark = pytest.mark.interop


class HashPinningAuthorization(CSCAuthorizationManager):
    """Asks ``credentials/authorize`` for a SAD bound to exactly the hashes to be signed."""

    def __init__(
        self, session_info: CSCServiceSessionInfo, credential: CSCCredentialInfo,
        session: aiohttp.ClientSession,
    ) -> None:
        super().__init__(session_info, credential)
        self.session = session
        self.authorized: list[list[str]] = []

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        pinned = hash_b64s if self.credential_info.hash_pinning_required else None
        request = self.format_csc_auth_request(hash_b64s=pinned)
        async with self.session.post(
            self.csc_session_info.endpoint_url("credentials/authorize"),
            headers=self.auth_headers, json=request, raise_for_status=True,
        ) as response:
            answer = await response.json()
        self.authorized.append(hash_b64s)
        return self.parse_csc_auth_response(answer)


@pytest.fixture
async def world(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> AsyncIterator[World]:
    async with World.running(settings, hsm, dev_ca) as running:
        yield running


async def csc_session(world: World, algorithm: KeyAlgorithm) -> tuple[dict[str, Any], str]:
    """An active seal of this algorithm and the token of a signer granted it."""
    seal = await world.active_seal(algorithm)
    _, headers = await world.client("signer", [seal["id"]])
    return seal, headers["Authorization"].removeprefix("Bearer ")


def service_url(world: World) -> str:
    """Where pyHanko appends ``/csc/v1/...``: the test server's root, without a slash."""
    return str(world.http.make_url("/")).rstrip("/")


async def sign_with_csc(signer: CSCSigner, document: bytes, field_name: str) -> bytes:
    writer = IncrementalPdfFileWriter(io.BytesIO(document))
    output = await signers.async_sign_pdf(
        writer, signers.PdfSignatureMetadata(field_name=field_name), signer=signer)
    data: bytes = output.getvalue()
    return data


async def csc_receipts(world: World, seal_id: str) -> list[dict[str, Any]]:
    records = await world.services.storage.list(SEALING_RECEIPT, where={"format": "csc"})
    return [r.data for r in records if r.data["seal_id"] == seal_id]


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256], ids=str)
async def test_pyhanko_csc_signer_seals_a_pdf_that_validates(
    world: World, dev_ca: DevCA, poppler: str, tmp_path: Path, algorithm: KeyAlgorithm
) -> None:
    """CSCSigner gets the chain, a pinned SAD and a signature; pyHanko and pdfsig accept it."""
    seal, token = await csc_session(world, algorithm)
    info = CSCServiceSessionInfo(service_url(world), seal["id"], oauth_token=token)
    async with aiohttp.ClientSession() as session:
        credential = await fetch_certs_in_csc_credential(session, info)
        assert credential.hash_pinning_required
        assert credential.max_batch_size == world.services.settings.signing.max_hash_batch
        assert credential.chain[0].dump() == to_asn1_certificate(dev_ca.certificate).dump()
        authorization = HashPinningAuthorization(info, credential, session)
        sealed = await sign_with_csc(CSCSigner(session, authorization),
                                     pdf_samples.one_page_pdf(), "CSC-Seal")

    (signature, status), = await validate(sealed, dev_ca)
    assert status.intact and status.valid and status.trusted, status.pretty_print_details()
    assert signature.signer_cert.dump() == credential.signing_cert.dump()
    count, validations = pdfsig_results(poppler, sealed, tmp_path)
    assert count == 1
    assert validations == ["- Signature Validation: Signature is Valid."]

    assert len(authorization.authorized) == 1
    (receipt,) = await csc_receipts(world, seal["id"])
    pinned = authorization.authorized[0]
    assert receipt["count"] == len(pinned) == 1
    assert receipt["client"].startswith("signer-")


async def test_a_batch_of_two_documents_is_one_authorization_and_one_sign_hash(
    world: World, dev_ca: DevCA
) -> None:
    """With batch_size=2, two documents signed together share one SAD and one receipt."""
    seal, token = await csc_session(world, KeyAlgorithm.EC_P256)
    info = CSCServiceSessionInfo(service_url(world), seal["id"], oauth_token=token)
    async with aiohttp.ClientSession() as session:
        credential = await fetch_certs_in_csc_credential(session, info)
        authorization = HashPinningAuthorization(info, credential, session)
        signer = CSCSigner(session, authorization, batch_size=2)
        sealed = await asyncio.gather(
            sign_with_csc(signer, pdf_samples.one_page_pdf(), "First"),
            sign_with_csc(signer, pdf_samples.multi_page_pdf(3), "Second"),
        )

    for document in sealed:
        (_signature, status), = await validate(document, dev_ca)
        assert status.intact and status.valid and status.trusted
    assert [len(hashes) for hashes in authorization.authorized] == [2]
    (receipt,) = await csc_receipts(world, seal["id"])
    assert receipt["count"] == 2


async def test_a_sad_pinned_to_other_hashes_makes_the_client_fail(world: World) -> None:
    """A prefetched SAD pinned to other hashes is refused; pyHanko reports a signing error."""
    seal, token = await csc_session(world, KeyAlgorithm.EC_P256)
    info = CSCServiceSessionInfo(service_url(world), seal["id"], oauth_token=token)
    async with aiohttp.ClientSession() as session:
        credential = await fetch_certs_in_csc_credential(session, info)
        pinning = HashPinningAuthorization(info, credential, session)
        other_hash = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
        sad = await pinning.authorize_signature([other_hash])
        prefetched = PrefetchedSADAuthorizationManager(info, credential, sad)
        with pytest.raises(SigningError):
            await sign_with_csc(CSCSigner(session, prefetched), pdf_samples.one_page_pdf(), "X")
    assert await csc_receipts(world, seal["id"]) == []


class RotatingAfterAuthorization(HashPinningAuthorization):
    """Authorizes as pyHanko asks, then moves the seal to another key before signHash."""

    world: World
    seal_id: str

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        answer = await super().authorize_signature(hash_b64s)
        key = await self.world.key(KeyAlgorithm.EC_P256)
        await self.world.services.seals.rotate_key(self.seal_id, key["id"], "test")
        return answer


async def test_a_key_rotated_after_authorization_makes_the_client_fail(world: World) -> None:
    """The client has put the old certificate into the signed attributes; signHash refuses
    the SAD instead of signing them with the new key, and pyHanko reports a signing error."""
    seal, token = await csc_session(world, KeyAlgorithm.EC_P256)
    info = CSCServiceSessionInfo(service_url(world), seal["id"], oauth_token=token)
    async with aiohttp.ClientSession() as session:
        credential = await fetch_certs_in_csc_credential(session, info)
        rotating = RotatingAfterAuthorization(info, credential, session)
        rotating.world, rotating.seal_id = world, seal["id"]
        with pytest.raises(SigningError):
            await sign_with_csc(CSCSigner(session, rotating), pdf_samples.one_page_pdf(), "R")
    assert await csc_receipts(world, seal["id"]) == []
