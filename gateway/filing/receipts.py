"""Filing receipts (备案回执): building one on approval, reading, and verifying one offered back.

A receipt is the JSON object of DOMAIN.md §2 with a ``signature`` member (detached JWS by the
platform, see gateway.keys.platform). It holds integers and strings only, because its canonical
form (RFC 8785) must be reproducible by any verifier and floats are where JSON encoders differ.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.clock import isoformat, parse
from gateway.errors import NotFound
from gateway.keys.platform import Check, PlatformSigner, unsigned
from gateway.keys.registry import KEY
from gateway.seals.policy import effective_status
from gateway.seals.registry import SEAL
from gateway.storage import Storage, Write

RECEIPT = "receipt"
RECEIPT_SEQUENCE = "receipt-sequence"
"""Records of the last receipt number issued on each day, keyed ``YYYYMMDD``."""
ID_TYPE_RESIDENT = "resident_id"


def receipt_number(day: dt.datetime, sequence: int) -> str:
    """``SG`` + issue date + a daily sequence: unique, sortable, readable over the phone."""
    return f"SG{day:%Y%m%d}{sequence:06d}"


@dataclass(frozen=True)
class ClaimedNumber:
    """The next receipt number of a day and the write that claims it."""

    number: str
    claim: Write
    """Commit it with the receipt: the number is issued exactly when the receipt is."""


async def claim_receipt_number(storage: Storage, day: dt.datetime) -> ClaimedNumber:
    """The number after the last one issued on ``day``, and the write that claims it.

    The daily sequence is a record written by compare-and-set in the commit that stores the
    receipt, so issued numbers have no gaps: a decision that loses its own compare-and-set
    claims nothing, and of two approvals that read the same last number, the second to
    commit fails on the sequence record (StaleWrite) and claims again.
    """
    key = f"{day:%Y%m%d}"
    record = await storage.get(RECEIPT_SEQUENCE, key)
    # Numbers used to come from an atomic counter taken before the commit: a deployment
    # upgraded during a day goes on after them, also while older workers still count there.
    counted = await storage.incr(f"receipt-seq:{key}", 0)
    last = max(int(record.data["last"]) if record else 0, counted)
    return ClaimedNumber(
        receipt_number(day, last + 1),
        Write(RECEIPT_SEQUENCE, key, record.version if record else 0, {"last": last + 1}),
    )


def build_receipt(
    *,
    number: str,
    authority: Mapping[str, str],
    filing: Mapping[str, Any],
    seal: Mapping[str, Any],
    key: Mapping[str, Any],
    seal_status: str,
    valid_from: dt.datetime | None,
    valid_to: dt.datetime | None,
    issued_at: dt.datetime,
    authority_reference: str,
) -> dict[str, Any]:
    """The unsigned receipt object; every field comes from records, nothing is re-typed."""
    certificate = key.get("certificate") or {}
    size = seal.get("image_size_mm") or {}
    legal = filing["legal_representative"]
    return {
        "number": number,
        "authority": {"id": authority["id"], "name": authority["name"]},
        "authority_reference": authority_reference,
        "action": filing["action"],
        "seal_status": seal_status,
        "seal": {"id": seal["id"], "code": seal["seal_code"], "name": seal["name"],
                 "type": seal["type"]},
        "organization": {"name": seal["organization"]["name"],
                         "uscc": seal["organization"]["uscc"]},
        "legal_representative": {"name": legal["name"], "id_type": ID_TYPE_RESIDENT,
                                 "id_number_masked": legal["id_number_masked"]},
        "valid_from": isoformat(valid_from) if valid_from else None,
        "valid_to": isoformat(valid_to) if valid_to else None,
        "issued_at": isoformat(issued_at),
        "certificate": {"serial": certificate.get("serial"), "issuer": certificate.get("issuer"),
                        "sha256": certificate.get("sha256")},
        "seal_image": {"sha256": seal.get("image_sha256"),
                       "width_mm": _mm(size.get("width")), "height_mm": _mm(size.get("height"))},
        "application_id": filing["id"],
        "supersedes": seal.get("receipt_number"),
    }


def receipt_write(receipt: Mapping[str, Any]) -> Write:
    return Write(RECEIPT, str(receipt["number"]), 0, dict(receipt))


async def load_receipt(storage: Storage, number: str) -> dict[str, Any]:
    record = await storage.get(RECEIPT, number)
    if record is None:
        raise NotFound(f"no receipt numbered {number}")
    return record.data


async def verify_receipt(
    storage: Storage, platform: PlatformSigner, receipt: Mapping[str, Any], now: dt.datetime
) -> list[Check]:
    """Every check of ``POST /v1/receipts/verify``: authentic, trusted, current, in validity."""
    checks = await platform.verify(receipt, now)
    if not all(c.ok for c in checks):
        return checks
    number = str(receipt.get("number"))
    stored = await storage.get(RECEIPT, number)
    if stored is None:
        checks.append(Check("issued", False, "the platform has no record of this receipt number"))
    elif unsigned(stored.data) != unsigned(receipt):
        checks.append(Check("issued", False, "the platform's record of this receipt number "
                                             "differs from the receipt presented"))
    else:
        checks.append(Check("issued", True, "the platform issued this receipt"))
    seal_id = str((receipt.get("seal") or {}).get("id"))
    seal = await storage.get(SEAL, seal_id)
    if seal is None:
        checks.append(Check("seal_status", False, "the seal no longer exists"))
    else:
        status = effective_status(seal.data, now)
        latest = seal.data.get("receipt_number")
        # A seal whose loss is reported signs nothing until the report is decided, so no
        # receipt of it is current meanwhile, though its status is still active.
        stopped = bool(seal.data.get("signing_stopped"))
        current = status == "active" and latest == number and not stopped
        detail = f"the seal is {status}"
        if stopped:
            detail += "; its loss has been reported and is under review"
        if latest != number:
            detail += f"; receipt {latest} has superseded this one"
        checks.append(Check("seal_status", current, detail))
    start, end = parse(receipt.get("valid_from")), parse(receipt.get("valid_to"))
    in_validity = start is not None and end is not None and start <= now < end
    checks.append(Check("validity", in_validity,
                        f"valid from {receipt.get('valid_from')} to {receipt.get('valid_to')}"))
    if seal is not None:
        checks.append(await _certificate_check(storage, seal.data, receipt))
    return checks


async def _certificate_check(
    storage: Storage, seal: Mapping[str, Any], receipt: Mapping[str, Any]
) -> Check:
    """The receipt files the seal's certificate (DOMAIN.md §2, item 6): once the seal signs
    under another (a rotated key, a certificate imported anew), the receipt no longer
    describes the seal, until a change filing files the new one."""
    filed = (receipt.get("certificate") or {}).get("sha256")
    key = await storage.get(KEY, str(seal.get("key_id")))
    signing = ((key.data.get("certificate") or {}).get("sha256")) if key is not None else None
    if filed == signing:
        return Check("seal_certificate", True,
                     "the seal signs with the certificate this receipt files")
    return Check("seal_certificate", False,
                 "the seal now signs with another certificate than the one this receipt "
                 "files; a change filing files it")


def _mm(value: object) -> str | None:
    """Millimetres as a decimal string ("40", "42.5"): receipts carry no JSON floats."""
    if value is None:
        return None
    return f"{float(str(value)):g}"
