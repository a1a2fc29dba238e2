"""The hooks a SealGate plugin may implement; first-party plugins use exactly these.

Hook specifications are synchronous factories: they run once at start-up and return objects
that implement the async protocols of the core (:mod:`gateway.storage`,
:mod:`gateway.filing.adapters`). An implementation may accept any subset of a spec's
arguments, as pluggy allows.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "sealgate"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def sealgate_storage_backends(settings: Any) -> list[Any]:
    """Return storage backend factories (each with ``name`` and ``create(settings)``).

    ``settings.storage.backend`` picks one of them by name.
    """
    return []


@hookspec
def sealgate_filing_adapters(settings: Any) -> list[Any]:
    """Return filing-authority adapters (each with a ``name``), one per authority they serve.

    An adapter implements :class:`gateway.filing.adapters.FilingAdapter`, and may implement
    ``withdraw`` too (:class:`~gateway.filing.adapters.WithdrawingAdapter`) so that its
    authority learns of withdrawn applications.
    """
    return []


@hookspec
def sealgate_register_commands(subparsers: Any) -> None:
    """Add ``sealgate`` subcommands: ``subparsers.add_parser(...)`` with ``handler`` set as
    a default (a function taking the parsed arguments, returning an exit code or a coroutine)."""
