"""Bytes in, bytes out: PAdES seals on PDFs, made with HSM keys through pyHanko."""

from gateway.signing.pdf import (
    SUPPORTED_LEVELS,
    PdfSealer,
    PdfSealOptions,
    SignatureLevel,
    check_pdf_header,
)
from gateway.signing.pdf_stamp import DEFAULT_MARGIN, DEFAULT_WIDTH, Placement, SealImage
from gateway.signing.seal_key import HsmSigner, SealKey

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_WIDTH",
    "SUPPORTED_LEVELS",
    "HsmSigner",
    "PdfSealOptions",
    "PdfSealer",
    "Placement",
    "SealImage",
    "SealKey",
    "SignatureLevel",
    "check_pdf_header",
]
