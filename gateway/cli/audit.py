"""`sealgate audit verify|export`: the audit chain checked and exported offline, from storage."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import opened, print_json


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="action", required=True)
    audit.add_parser("verify", help="check every event and checkpoint; exit 1 when broken") \
        .set_defaults(handler=verify)
    export = audit.add_parser("export", help="write events as JSON lines (for a SIEM)")
    export.add_argument("--since", type=int, default=0, help="only events after this seq")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=export_events)


async def verify(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        result = await services.audit.verify()
    print_json(dataclasses.asdict(result))
    return 0 if result.intact else 1


async def export_events(args: argparse.Namespace) -> int:
    from gateway.audit import export_jsonl

    async with opened(args) as services:
        if args.out:
            with args.out.open("w", encoding="utf-8") as fh:
                count = await export_jsonl(services.storage, fh, args.since)
        else:
            count = await export_jsonl(services.storage, sys.stdout, args.since)
    print(f"exported {count} events", file=sys.stderr)
    return 0
