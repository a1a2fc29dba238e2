"""`sealgate …`: the command line for operators, security teams and batch signing.

Heavy modules are imported inside each command, after the process model is decided, because
prometheus_client fixes its storage mode at import (see gateway.server.prepare_metrics_dir).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.log_setup import configure_logging

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int]


def build_parser() -> argparse.ArgumentParser:
    from gateway.cli import admin, approvals, audit, filings, setup, sign
    from gateway.plugins import plugin_manager

    parser = argparse.ArgumentParser(prog="sealgate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a settings file read after config/sealgate.toml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (setup, admin, filings, sign, audit, approvals):
        module.register(sub)
    plugin_manager().hook.sealgate_register_commands(subparsers=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    from gateway.errors import SealGateError

    handler: Command = args.handler
    try:
        result = handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except SealGateError as exc:
        field_errors = getattr(exc, "errors", [])
        # With field errors the detail only joins them: say each once, one per line.
        print(f"sealgate: {exc.title.lower() if field_errors else exc.detail}", file=sys.stderr)
        for field_error in field_errors:
            print(f"  {field_error.field}: {field_error.message}", file=sys.stderr)
        return 2 if exc.status < 500 else 1
    except OSError as exc:
        # A file named on the command line that is missing, unreadable or in the way.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sealgate: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # Content that is not what the command reads (JSON that does not parse, text that
        # is not UTF-8, ...); the message names what, never a secret's value.
        print(f"sealgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
