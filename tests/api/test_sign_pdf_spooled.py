"""sign/pdf for documents above the spool threshold: sealed in a temporary file, streamed back."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from gateway.api import bodies
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.test_sign_pdf import PDF, SignerWorld, assert_problem, sign_path
from tests.pdf_samples import one_page_pdf

SPOOL_ABOVE = 64 * 1024


@pytest.fixture(autouse=True)
def small_spool_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool from 64 KiB on, so that the large-document path runs with small documents."""
    monkeypatch.setattr(bodies, "SPOOL_BYTES", SPOOL_ABOVE)


def padded_pdf(size: int) -> bytes:
    """A one-page PDF carrying ``size`` random bytes in a stream the catalog points to."""
    writer = IncrementalPdfFileWriter(io.BytesIO(one_page_pdf()))
    padding = writer.add_object(generic.StreamObject(stream_data=os.urandom(size)))
    writer.root[pdf_name("/SealGateTestPadding")] = padding
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdfsig_valid(poppler: str, data: bytes, path: Path) -> str:
    path.write_bytes(data)
    return subprocess.run([poppler, str(path)], capture_output=True, text=True,
                          check=False).stdout


@pytest.mark.interop
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_large_document_is_sealed_validly_with_exact_receipt_digests(
    signer_world: SignerWorld, tmp_path: Path, poppler: str, declared: bool
) -> None:
    """Spooled documents (declared large, or found large while arriving) come back sealed as
    an incremental update, valid in pdfsig, and the receipt names both documents' SHA-256."""
    world, seal, headers = signer_world
    document = padded_pdf(4 * SPOOL_ABOVE)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(document), 16 * 1024):
            yield document[start:start + 16 * 1024]

    response = await world.http.post(sign_path(seal["id"]),
                                     data=document if declared else chunked(),
                                     headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pdf"
    assert "Content-Disposition" not in response.headers
    sealed = await response.read()
    assert sealed.startswith(document), "the seal must be an incremental update"
    report = pdfsig_valid(poppler, sealed, tmp_path / "sealed.pdf")
    assert report.count("Signature is Valid") == 1, report

    receipt = await world.http.get(
        f"/v1/sealing-receipts/{response.headers['Sealgate-Receipt']}", headers=headers)
    body: dict[str, Any] = await receipt.json()
    assert body["document_sha256_before"] == hashlib.sha256(document).hexdigest()
    assert body["document_sha256_after"] == hashlib.sha256(sealed).hexdigest()
    spool = Path(world.services.settings.var_dir) / "spool"
    assert not spool.exists() or not list(spool.iterdir()), "no spool file is left behind"


async def test_spooled_body_over_limit_is_413(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """A chunked body that passes the limit only after spooling began is still 413."""
    limit = 4 * SPOOL_ABOVE
    capped = settings.replace(server=dataclasses.replace(settings.server, max_body_bytes=limit))
    async with World.running(capped, hsm, dev_ca) as world:
        seal = await world.active_seal()
        _, headers = await world.client("signer", [seal["id"]])
        oversized = padded_pdf(2 * limit)

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(oversized), 16 * 1024):
                yield oversized[start:start + 16 * 1024]

        response = await world.http.post(sign_path(seal["id"]), data=chunked(),
                                         headers={**headers, **PDF})
        await assert_problem(response, 413, "payload-too-large")


async def test_spooled_body_that_is_not_a_pdf_is_415(signer_world: SignerWorld) -> None:
    """The header check applies to spooled bodies too."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), data=bytes(2 * SPOOL_ABOVE),
                                     headers={**headers, **PDF})
    await assert_problem(response, 415, "unsupported-media-type")
