"""Typed keys for what the app and each request carry, and the role marks on handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.auth import ApiClient
from gateway.services import Services
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT = web.RequestKey("client", ApiClient)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROLES_ATTR = "__sealgate_roles__"
OPEN_WHEN_ATTR = "__sealgate_open_when__"


def roles(
    *allowed: str, open_when: Callable[[Settings], bool] | None = None
) -> Callable[[Handler], Handler]:
    """Mark a handler with the roles that may call it (admin always may).

    The auth middleware is the one place that reads the mark; handlers never check roles.
    ``@roles()`` with no role means anyone, without a token; ``open_when`` opens a route to
    anyone when the settings say so (``POST /tsa`` with ``[tsa] allow_anonymous``).
    """

    def mark(handler: Handler) -> Handler:
        setattr(handler, ROLES_ATTR, tuple(allowed))
        if open_when is not None:
            setattr(handler, OPEN_WHEN_ATTR, open_when)
        return handler

    return mark


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def client(request: web.Request) -> ApiClient:
    """The authenticated caller; only handlers marked with roles have one."""
    return request[CLIENT]


def request_id(request: web.Request) -> str:
    return str(request.get(REQUEST_ID, "-"))
