"""`sealgate filings|receipts …` and `sealgate seals expiring`: the seal's legal life by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import OPERATOR, opened, print_json


def register(sub: Any) -> None:
    filings = sub.add_parser("filings", help="filing applications (备案)").add_subparsers(
        dest="action", required=True)
    create = filings.add_parser("create", help="draft a filing for a seal")
    create.add_argument("--seal", required=True)
    create.add_argument("--action", dest="filing_action", default="new",
                        choices=["new", "renew", "change", "suspend", "resume", "report_loss",
                                 "cancel"])
    create.add_argument("--authority", help="authority id (default from settings)")
    create.add_argument("--applicant-name", required=True)
    create.add_argument("--applicant-phone", required=True)
    create.add_argument("--legal-name", required=True, help="legal representative's name")
    create.add_argument("--legal-id-file", type=Path, required=True,
                        help="file holding the legal representative's ID number "
                             "(a file, so the number stays out of shell history)")
    create.set_defaults(handler=create_filing)
    material = filings.add_parser("material", help="attach a PDF/PNG/JPEG material")
    material.add_argument("filing")
    material.add_argument("kind", choices=["business_license", "legal_rep_id",
                                           "seal_impression", "authorization_letter"])
    material.add_argument("file", type=Path)
    material.set_defaults(handler=add_material)
    for name, help_text in (("submit", "submit to the authority"), ("show", "show one")):
        p = filings.add_parser(name, help=help_text)
        p.add_argument("filing")
        p.set_defaults(handler=filing_step, step=name)
    listing = filings.add_parser("list")
    listing.add_argument("--seal")
    listing.set_defaults(handler=list_filings)
    review = filings.add_parser("review", help="decide a filing of the local authority")
    review.add_argument("filing")
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true")
    decision.add_argument("--reject", action="store_true")
    review.add_argument("--comment", default="")
    review.add_argument("--valid-days", type=int)
    review.set_defaults(handler=review_filing)
    withdraw = filings.add_parser("withdraw", help="withdraw a submitted filing (its authority "
                                                   "is told first); the seal returns")
    withdraw.add_argument("filing")
    withdraw.add_argument("--reason", required=True)
    withdraw.set_defaults(handler=withdraw_filing)
    filings.add_parser("process", help="hand pending filings to remote authorities and "
                                       "collect decisions, once").set_defaults(handler=process)

    receipts = sub.add_parser("receipts", help="filing receipts (备案回执)").add_subparsers(
        dest="action", required=True)
    show = receipts.add_parser("show", help="print the signed receipt JSON")
    show.add_argument("number")
    show.add_argument("--pdf", type=Path, help="also write the signed receipt PDF here")
    show.set_defaults(handler=show_receipt)
    verify = receipts.add_parser("verify", help="verify a receipt JSON or PDF file")
    verify.add_argument("file", type=Path)
    verify.set_defaults(handler=verify_receipt)


def register_seal_commands(seals: Any) -> None:
    expiring = seals.add_parser("expiring", help="active seals whose validity ends soon")
    expiring.add_argument("--days", type=int, default=30)
    expiring.set_defaults(handler=expiring_seals)


async def create_filing(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    body = {
        "seal_id": args.seal, "action": args.filing_action, "authority": args.authority,
        "applicant": {"name": args.applicant_name, "phone": args.applicant_phone},
        "legal_representative": {"name": args.legal_name,
                                 "id_number": args.legal_id_file.read_text().strip()},
    }
    async with opened(args) as services:
        print_json(public_view(await services.filings.create(body, OPERATOR.name)))
    return 0


async def add_material(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    async with opened(args) as services:
        filing = await services.filings.put_material(args.filing, args.kind,
                                                     args.file.read_bytes(), OPERATOR.name)
        print_json(public_view(filing))
    return 0


async def filing_step(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    async with opened(args) as services:
        if args.step == "submit":
            filing = await services.filings.submit(args.filing, OPERATOR.name)
        else:
            filing = await services.filings.get(args.filing)
        print_json(public_view(filing))
    return 0


async def list_filings(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    async with opened(args) as services:
        print_json([public_view(f) for f in await services.filings.list(args.seal)])
    return 0


async def review_filing(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    body: dict[str, Any] = {"decision": "approve" if args.approve else "reject",
                            "comment": args.comment}
    if args.valid_days:
        body["valid_days"] = args.valid_days
    async with opened(args) as services:
        print_json(public_view(await services.filings.review(args.filing, body, OPERATOR.name)))
    return 0


async def withdraw_filing(args: argparse.Namespace) -> int:
    from gateway.filing.service import public_view

    async with opened(args) as services:
        print_json(public_view(await services.filings.withdraw(
            args.filing, {"reason": args.reason}, OPERATOR.name)))
    return 0


async def process(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        moved = await services.filings.process_pending()
    print(f"{moved} filing(s) moved on")
    return 0


async def show_receipt(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        print_json(await services.receipts.get(args.number))
        if args.pdf:
            args.pdf.write_bytes(await services.receipts.pdf(args.number))
            print(f"wrote {args.pdf}", file=sys.stderr)
    return 0


async def verify_receipt(args: argparse.Namespace) -> int:
    data = args.file.read_bytes()
    now = dt.datetime.now(dt.UTC)
    async with opened(args) as services:
        if data.lstrip()[:5] == b"%PDF-":
            result = await services.receipts.verify_pdf(data, now)
        else:
            result = await services.receipts.verify_json(json.loads(data), now)
    print_json(result)
    return 0 if result["valid"] else 1


async def expiring_seals(args: argparse.Namespace) -> int:
    from gateway.clock import parse, utcnow
    from gateway.seals.registry import public_view

    now = utcnow()
    horizon = now + dt.timedelta(days=args.days)
    async with opened(args) as services:
        seals = await services.seals.list_for(OPERATOR)
    soon = []
    for seal in seals:
        valid_to = parse(seal.get("valid_to"))
        if seal["status"] == "active" and valid_to is not None and valid_to <= horizon:
            soon.append({**public_view(seal, now),
                         "days_left": max(0, (valid_to - now).days)})
    print_json(sorted(soon, key=lambda s: str(s["valid_to"])))
    return 0
