"""The one rule every signing path asks: may this seal sign now?

A seal may sign only while ``active``, inside its filing receipt's validity period, with an
enabled key and a certificate valid at that moment (DOMAIN.md §2). Each refusal names its
reason, which becomes the problem type ``seal-<reason>``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from gateway.clock import parse as parse_time
from gateway.errors import SealMaySignNot

REFUSAL_BY_STATUS = {
    "draft": ("not-filed", "the seal has not been filed yet"),
    "pending_filing": ("not-filed", "the seal's filing has not been approved yet"),
    "suspended": ("suspended", "the seal is suspended"),
    "lost": ("lost", "the seal has been reported lost"),
    "cancelled": ("cancelled", "the seal has been cancelled"),
}


def effective_status(seal: Mapping[str, Any], now: dt.datetime) -> str:
    """The stored status, except that an active seal past its validity end is ``expired``."""
    status = str(seal["status"])
    valid_to = parse_time(seal.get("valid_to"))
    if status == "active" and valid_to is not None and now >= valid_to:
        return "expired"
    return status


def may_sign(seal: Mapping[str, Any], key: Mapping[str, Any], now: dt.datetime) -> None:
    """Return when the seal may sign at ``now``; raise SealMaySignNot naming the reason."""
    status = str(seal["status"])
    if status in REFUSAL_BY_STATUS:
        reason, detail = REFUSAL_BY_STATUS[status]
        raise SealMaySignNot(reason, detail)
    stopped = seal.get("signing_stopped")
    if stopped:
        raise SealMaySignNot(str(stopped.get("reason", "stopped")),
                             "the seal's loss has been reported; it signs nothing until decided")
    valid_from = parse_time(seal.get("valid_from"))
    valid_to = parse_time(seal.get("valid_to"))
    if valid_from is None or valid_to is None:
        raise SealMaySignNot("not-filed", "the seal has no filing receipt validity period")
    if now < valid_from:
        raise SealMaySignNot("not-yet-valid", f"the seal's filing is valid from {valid_from}")
    if now >= valid_to:
        raise SealMaySignNot("expired", f"the seal's filing validity ended at {valid_to}")
    if key.get("status") != "enabled":
        raise SealMaySignNot("key-disabled", f"the seal's key is {key.get('status')}")
    certificate = key.get("certificate") or {}
    not_before = parse_time(certificate.get("not_before"))
    not_after = parse_time(certificate.get("not_after"))
    if not_before is None or not_after is None:
        raise SealMaySignNot("no-certificate", "the seal's key has no certificate")
    if now < not_before:
        raise SealMaySignNot("certificate-not-yet-valid", "the seal's certificate is not valid yet")
    if now >= not_after:
        raise SealMaySignNot("certificate-expired", "the seal's certificate has expired")
