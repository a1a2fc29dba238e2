"""What every command shares: settings from --config, and the service objects."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.auth import ApiClient
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from gateway.services import Services

# Commands run by an operator on the gateway's own machine act with full rights; their audit
# events name the operator as "cli".
OPERATOR = ApiClient(id="cli", name="cli", role="admin", seals=(), status="active",
                     created_at="", local_operator=True)


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Services]:
    # Imported here: the service graph loads prometheus_client, which must come after
    # `serve` has chosen the metrics mode.
    from gateway.services import close_services, open_services

    services = await open_services(settings_from(args))
    try:
        yield services
    finally:
        await close_services(services)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def add_token_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-out", type=Path, metavar="FILE",
                        help="write the new token to FILE (mode 0600) instead of stderr")


def hand_out(token: str, out: Path | None, what: str) -> None:
    """The one moment a token is visible: into ``out`` (replaced whole, mode 0600, so a
    rotated officer token can go back into its own file), or onto stderr."""
    if out is None:
        print(f"{what} (shown once, store it now): {token}", file=sys.stderr)
        return
    staged = out.with_name(f".{out.name}.new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.replace(staged, out)
    print(f"{what} written to {out}", file=sys.stderr)
