"""`sealgate sign pdf`: batch sealing from the command line, with a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import OPERATOR, opened

BAR_WIDTH = 30
CONCURRENCY = 4


def register(sub: Any) -> None:
    sign = sub.add_parser("sign", help="seal documents in this process").add_subparsers(
        dest="format", required=True)
    pdf = sign.add_parser("pdf", help="seal PDFs with a visible seal (PAdES B-B)")
    pdf.add_argument("--seal", required=True, help="seal id")
    pdf.add_argument("--out", type=Path, required=True, help="directory for the sealed files")
    pdf.add_argument("--page", type=int)
    pdf.add_argument("--reason")
    pdf.add_argument("--location")
    pdf.add_argument("--invisible", action="store_true")
    pdf.add_argument("inputs", nargs="+", type=Path, metavar="IN.pdf")
    pdf.set_defaults(handler=sign_pdf)


async def sign_pdf(args: argparse.Namespace) -> int:
    from gateway.errors import SealGateError
    from gateway.signing import PdfSealOptions, Placement

    names = [path.name for path in args.inputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        # Each output is OUT/<input's name>: two inputs of one name would overwrite each
        # other after both were sealed and audited.
        print(f"sealgate: inputs share a file name, so their outputs would overwrite each "
              f"other: {', '.join(twice)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    options = PdfSealOptions(placement=Placement(page=args.page), reason=args.reason,
                             location=args.location, visible=not args.invisible)
    progress = Progress(len(args.inputs))
    failures = 0
    gate = asyncio.Semaphore(CONCURRENCY)
    async with opened(args) as services:

        async def one(path: Path) -> None:
            nonlocal failures
            async with gate:
                try:
                    result = await services.sealing.seal_pdf(
                        OPERATOR, args.seal, path.read_bytes(), options)
                    (args.out / path.name).write_bytes(result.output)
                except (SealGateError, OSError) as exc:
                    failures += 1
                    detail = getattr(exc, "detail", None) or str(exc)
                    progress.note(f"{path}: {detail}")
                progress.advance()

        await asyncio.gather(*(one(p) for p in args.inputs))
    progress.finish()
    print(f"sealed {len(args.inputs) - failures} of {len(args.inputs)} into {args.out}")
    return 1 if failures else 0


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def advance(self) -> None:
        self.done += 1
        if self.tty:
            filled = BAR_WIDTH * self.done // self.total
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                             f"{self.done}/{self.total} {rate:.0f}/s")
            sys.stderr.flush()

    def note(self, message: str) -> None:
        sys.stderr.write(("\n" if self.tty else "") + message + "\n")

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
