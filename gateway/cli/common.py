"""What every command shares: settings from --config, and the service objects."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
