"""How many bytes of request bodies one worker holds at once, in memory and in spool files.

Each request's body is bounded by ``[server] max_body_bytes``, but the number of requests a
worker reads at once is not: anyone may post a document to ``/v1/verify``, which is read
whole into memory before its turn to be verified comes, and a client that sends all but the
last byte holds that memory until the body times out: twenty such connections held
1.3 GB of one worker (337 MB with the budget).
The budget refuses (503 with Retry-After) the body that would take a worker past
``[server] max_body_memory_bytes`` in memory, or ``max_spool_bytes`` in spool files, before
reading it when its length is declared and as soon as it passes the limit when chunked.
A request's bytes count until its handler has answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.api.context import Handler
from gateway.errors import Overloaded


@dataclass
class _Pool:
    what: str
    limit: int
    held: int = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Overloaded(
                f"this worker holds {self.held} bytes of request bodies {self.what} against "
                f"a limit of {self.limit}; retry"
            )
        self.held += size


class BodyBudget:
    """The bytes of request bodies one worker holds: ``memory`` and ``spool`` (on disk)."""

    def __init__(self, memory_bytes: int, spool_bytes: int) -> None:
        self.memory = _Pool("in memory", memory_bytes)
        self.spool = _Pool("in spool files", spool_bytes)


class BodyAllowance:
    """What one request took from its worker's budget, given back when it is answered."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self._memory = 0
        self._spool = 0

    def take_memory(self, size: int) -> None:
        self._budget.memory.take(size)
        self._memory += size

    def give_back_memory(self, size: int) -> None:
        """Bytes of this request no longer held in memory (moved to a spool file)."""
        size = min(size, self._memory)
        self._budget.memory.held -= size
        self._memory -= size

    def take_spool(self, size: int) -> None:
        self._budget.spool.take(size)
        self._spool += size

    def give_back(self) -> None:
        self._budget.memory.held -= self._memory
        self._budget.spool.held -= self._spool
        self._memory = self._spool = 0


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
BODY_ALLOWANCE = web.RequestKey("body_allowance", BodyAllowance)


@web.middleware
async def body_budget_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    allowance = request[BODY_ALLOWANCE] = BodyAllowance(request.app[BODY_BUDGET])
    try:
        return await handler(request)
    finally:
        allowance.give_back()
