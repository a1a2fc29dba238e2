"""Checks that the answers the benchmark timed are right, so a fast wrong answer cannot pass.

Sampled answers of each scenario are verified by outside verifiers: sealed PDFs by poppler's
``pdfsig`` and by pyHanko's validator (trusting only the benchmark's dev CA), CMS signatures
by pyHanko's detached-CMS validator over the payload that was sent, and hash signatures by
``cryptography`` against the seal's certificate and the digests that were sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

_VALID = "- Signature Validation: Signature is Valid."


def pdfsig(path: Path, timeout: float = 300) -> dict[str, Any]:
    """pdfsig's verdict: every signature it lists must validate."""
    try:
        run = subprocess.run(["pdfsig", "-no-ocsp", str(path)], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "detail": f"pdfsig could not run: {exc}"}
    lines = [line.strip() for line in run.stdout.splitlines()]
    signatures = sum(1 for line in lines if line.startswith("Signature #"))
    valid = sum(1 for line in lines if line == _VALID)
    ok = run.returncode == 0 and signatures > 0 and valid == signatures
    return {"ok": ok, "signatures": signatures, "valid": valid,
            "detail": "" if ok else (run.stdout + run.stderr)[-400:]}


def pyhanko_pdf(path: Path, ca_pem: Path) -> dict[str, Any]:
    """pyHanko's validator: the newest signature intact, valid and trusted, covering the file."""
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import async_validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    from gateway.signing.seal_key import to_asn1_certificate

    root = to_asn1_certificate(x509.load_pem_x509_certificate(ca_pem.read_bytes()))
    with path.open("rb") as fh:
        reader = PdfFileReader(fh)
        signature = reader.embedded_signatures[-1]
        status = asyncio.run(async_validate_pdf_signature(
            signature, ValidationContext(trust_roots=[root])))
        coverage = status.coverage.name if status.coverage is not None else None
    ok = bool(status.intact and status.valid and status.trusted and coverage == "ENTIRE_FILE")
    return {"ok": ok, "detail": "" if ok else status.summary()}


def pyhanko_cms(signature: bytes, payload: bytes, ca_pem: Path) -> dict[str, Any]:
    """A detached CMS over ``payload``: intact, valid, trusted to the dev CA."""
    from asn1crypto import cms
    from pyhanko.sign.validation.generic_cms import async_validate_detached_cms
    from pyhanko_certvalidator import ValidationContext

    from gateway.signing.seal_key import to_asn1_certificate

    root = to_asn1_certificate(x509.load_pem_x509_certificate(ca_pem.read_bytes()))
    try:
        signed_data = cms.ContentInfo.load(signature)["content"]
        status = asyncio.run(async_validate_detached_cms(
            payload, signed_data, signer_validation_context=ValidationContext(trust_roots=[root])))
    except Exception as exc:  # any parse or validation failure is a wrong answer
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    ok = bool(status.intact and status.valid and status.trusted)
    return {"ok": ok, "detail": "" if ok else status.summary()}


def hash_signatures(answer: bytes, request: bytes, chain_pem: str) -> dict[str, Any]:
    """Every signature in a ``sign/hash`` answer verifies over the digest sent at its index."""
    try:
        body = json.loads(answer)
        digests = [base64.b64decode(h) for h in json.loads(request)["hashes"]]
        signatures = [base64.b64decode(s) for s in body["signatures"]]
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "detail": f"the answer cannot be read: {exc}"}
    if len(signatures) != len(digests):
        return {"ok": False, "detail": f"{len(signatures)} signatures for {len(digests)} hashes"}
    public_key = x509.load_pem_x509_certificates(chain_pem.encode())[0].public_key()
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        for digest, signature in zip(digests, signatures, strict=True):
            if isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
            elif isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, digest, ec.ECDSA(prehashed))
            else:
                return {"ok": False, "detail": "unexpected key type"}
    except InvalidSignature:
        return {"ok": False, "detail": "a signature does not verify"}
    return {"ok": True, "detail": "", "signatures": len(signatures)}
