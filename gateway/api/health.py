"""Liveness, readiness (HSM and storage checks) and the Prometheus exposition."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import metrics
from gateway.api.bodies import json_response
from gateway.api.context import roles, services
from gateway.api.spec import TEXT, Answer, documented, json_answer, obj, one_of
from gateway.errors import SealGateError
from gateway.storage import BackendUnavailable

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

CHECK_TIMEOUT_SECONDS = 2.0

READINESS = obj({"status": one_of(["ready", "unavailable"]),
                 "checks": {**obj({"hsm": TEXT, "storage": TEXT}),
                            "additionalProperties": TEXT,
                            "description": "ok, timeout, or what is wrong"}})


@routes.get("/healthz")
@roles()
@documented(json_answer(200, "The process is alive", obj({"status": one_of(["ok"])})))
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
@roles()
@documented(json_answer(200, "The HSM and the storage answer", READINESS),
            json_answer(503, "A check failed; checks says which", READINESS))
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    checks = {
        "hsm": await _check(svc.hsm.check()),
        "storage": await _check(svc.storage.ping()),
    }
    ready = all(value == "ok" for value in checks.values())
    return json_response({"status": "ready" if ready else "unavailable", "checks": checks},
                         status=200 if ready else 503)


async def _check(probe: object) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except TimeoutError:
        return "timeout"
    except (SealGateError, BackendUnavailable) as exc:
        return getattr(exc, "type_slug", "unavailable")
    except Exception:  # a probe failing in a way nobody foresaw is not ready either
        log.exception("readiness probe failed")
        return "unavailable"
    return "ok"


@routes.get("/metrics")
@roles()
@documented(Answer(200, "Prometheus text exposition format", {"text/plain": TEXT}))
async def prometheus_metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(metrics.render_latest)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
