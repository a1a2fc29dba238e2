"""Every Prometheus collector of the gateway, defined once.

With several worker processes the collectors run in prometheus_client's multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` is set (and emptied) by the serving master before any worker
imports this module, and ``/metrics`` aggregates every worker's files and the totals of the
dead ones (gateway/metrics_dir.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.metrics_dir import WorkerFiles

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

HTTP_REQUESTS = Counter(
    "sealgate_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "sealgate_http_request_seconds",
    "HTTP request latency by route template.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
SIGNING_SECONDS = Histogram(
    "sealgate_signing_seconds",
    "Time to produce one signed result, by format (pdf, cms, hash, csc).",
    ["format"],
    buckets=LATENCY_BUCKETS,
)
SIGNATURES = Counter(
    "sealgate_signatures_total",
    "Signing operations completed, by format.",
    ["format"],
)
SIGNING_ERRORS = Counter(
    "sealgate_signing_errors_total",
    "Signing requests the signing service refused or failed, by format and problem type "
    "(malformed requests are in sealgate_http_requests_total by status).",
    ["format", "reason"],
)
DOCUMENT_BYTES = Histogram(
    "sealgate_document_bytes",
    "Size of documents received for signing, by format.",
    ["format"],
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
HSM_OPERATION_SECONDS = Histogram(
    "sealgate_hsm_operation_seconds",
    "Latency of PKCS#11 operations (queueing on the HSM thread included), by operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
HSM_ERRORS = Counter(
    "sealgate_hsm_errors_total",
    "PKCS#11 operations that failed, by operation and error class.",
    ["operation", "error"],
)
HSM_UP = Gauge(
    "sealgate_hsm_up",
    "1 when this worker's HSM session works, 0 otherwise.",
    # live: a dead worker's last value must not hold the minimum down after its replacement.
    multiprocess_mode="livemin",
)
WORKERS_UP = Gauge(
    "sealgate_workers_up",
    "Worker processes that take connections (each counts 1 from start-up to shutdown).",
    multiprocess_mode="livesum",
)
SIGNING_IN_FLIGHT = Gauge(
    "sealgate_signing_in_flight",
    "Signing operations currently in progress.",
    multiprocess_mode="livesum",
)
SEAL_VALID_TO = Gauge(
    "sealgate_seal_valid_to_timestamp_seconds",
    "When each seal stops signing, while it is active or expired (Unix time): the end of "
    "its filing validity or of its certificate, whichever comes first; 0 once it is neither.",
    ["seal_id", "seal_name"],
    # Every worker publishes the same values from storage; the latest write is the truth
    # (a renewal moves the date later, a cancellation ends it).
    multiprocess_mode="livemostrecent",
)
STORAGE_UP = Gauge(
    "sealgate_storage_up",
    "1 when this worker reached the storage backend at its last probe, 0 otherwise.",
    multiprocess_mode="livemin",
)
STORAGE_UNAVAILABLE = Counter(
    "sealgate_storage_unavailable_total",
    "Requests answered 503 because the storage backend could not be reached.",
)
RATE_LIMITED = Counter(
    "sealgate_rate_limited_total",
    "Requests refused with 429 by the per-client rate limit.",
)
IDEMPOTENT_REQUESTS = Counter(
    "sealgate_idempotent_requests_total",
    "Requests with an Idempotency-Key, by outcome (executed, replayed, recovered, reused, "
    "in_progress).",
    ["outcome"],
)
AUTH_FAILURES = Counter(
    "sealgate_auth_failures_total",
    "Requests refused for a missing, unknown or revoked token.",
    ["reason"],
)


_published_seals: set[tuple[str, str]] = set()


def publish_seal_validity(active: Mapping[tuple[str, str], float]) -> None:
    """Set the validity gauge of every seal in force (active, or expired and waiting for its
    renewal): ``(seal id, seal name) -> valid_to``.

    A seal published before and missing now is no longer in force. Multiprocess mode
    cannot remove a series (it stays in the worker's file), so there it is set to 0, and
    alert rules look only at values above 0.
    """
    multiprocess_mode = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    for labels, valid_to in active.items():
        SEAL_VALID_TO.labels(*labels).set(valid_to)
    for labels in _published_seals - active.keys():
        if multiprocess_mode:
            SEAL_VALID_TO.labels(*labels).set(0)
        else:
            SEAL_VALID_TO.remove(*labels)
    _published_seals.clear()
    _published_seals.update(active)


def render_latest() -> bytes:
    """The text exposition of every collector, aggregated over worker processes when needed."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        return generate_latest(worker_files_registry(directory))
    return generate_latest()


def worker_files_registry(directory: str) -> CollectorRegistry:
    """A registry that merges the metric files in ``directory`` when collected."""
    registry = CollectorRegistry()
    registry.register(WorkerFiles(directory))
    return registry
