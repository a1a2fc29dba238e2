"""The whole SealGate exception hierarchy; each class knows its HTTP status and problem type.

    SealGateError
    ├── ConfigError                      (settings; not an HTTP answer)
    ├── HsmError                         500 hsm-error
    ├── WrappedDataInvalid               500 wrapped-data-invalid
    ├── ClientError                      4xx
    │   ├── BadRequest                   400 bad-request
    │   │   └── CscRequestError          400 csc-<error> (CSC API error code)
    │   ├── Unauthorized                 401 unauthorized
    │   ├── Forbidden                    403 forbidden
    │   │   └── DualControlRefused       403 dual-control
    │   ├── NotFound                     404 not-found
    │   ├── RequestTimeout               408 request-timeout
    │   ├── Conflict                     409 conflict
    │   │   ├── IdempotencyConflict      409 idempotency-key-reused
    │   │   ├── IdempotencyInProgress    409 idempotency-key-in-progress
    │   │   ├── InvalidTransition        409 invalid-transition
    │   │   ├── MaterialUnreadable       409 conflict (a filing material storage cannot give)
    │   │   └── ApprovalExpired          409 approval-expired
    │   ├── SealMaySignNot               409 seal-<reason>
    │   ├── PayloadTooLarge              413 payload-too-large
    │   ├── UnsupportedMediaType         415 unsupported-media-type
    │   ├── Unprocessable                422 unprocessable
    │   │   ├── ValidationFailed         422 validation-failed (field errors)
    │   │   └── BadDocument              422 bad-document / encrypted-document / page-out-of-range
    │   └── TooManyRequests              429 rate-limited
    └── ServiceUnavailable               503
        ├── HsmUnavailable               503 hsm-unavailable
        ├── StorageUnavailable           503 storage-unavailable
        ├── AuthorityUnreachable         503 authority-unavailable
        └── Overloaded                   503 overloaded

Foreign exceptions are wrapped where they enter (``raise HsmUnavailable(...) from exc``) so
that nothing above the layer that met them needs to know the library that raised them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request: where it is and which rule it broke."""

    field: str
    message: str


class SealGateError(Exception):
    """Base of every error the gateway raises on purpose."""

    status = 500
    type_slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str = "", *, type_slug: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if type_slug is not None:
            self.type_slug = type_slug


class ConfigError(SealGateError):
    """The settings are wrong; raised at start-up, never answered over HTTP."""

    type_slug = "config-error"
    title = "Configuration error"


class ClientError(SealGateError):
    """Something the client sent or asked for is wrong; the detail says what."""

    status = 400
    type_slug = "bad-request"
    title = "Bad request"


class BadRequest(ClientError):
    pass


class CscRequestError(BadRequest):
    """A CSC API request the service refuses. ``error`` is the CSC (OAuth 2.0 style) error
    code of CSC API v1.0.4.0 §10.2, and the detail its ``error_description``."""

    title = "Invalid CSC request"

    def __init__(self, description: str, error: str = "invalid_request") -> None:
        super().__init__(description, type_slug="csc-" + error.replace("_", "-"))
        self.error = error


class Unauthorized(ClientError):
    status = 401
    type_slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str = "", *, token_sent: bool = False) -> None:
        super().__init__(detail)
        # The WWW-Authenticate challenge every 401 carries (RFC 6750 §3).
        self.challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"


class Forbidden(ClientError):
    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class DualControlRefused(Forbidden):
    """A dual-control step by someone who may not take it: the requester approving their own
    request, or a client that is not an active key officer."""

    type_slug = "dual-control"
    title = "Dual control refused"


class NotFound(ClientError):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(ClientError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class IdempotencyConflict(Conflict):
    type_slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class IdempotencyAnswerLost(Conflict):
    """The answer for a key is remembered but its stored bytes have expired."""

    type_slug = "idempotency-answer-lost"
    title = "Idempotent answer no longer available"


class IdempotencyInProgress(Conflict):
    """The first request with this key is still running; retry after ``retry_after`` s."""

    type_slug = "idempotency-key-in-progress"
    title = "A request with this idempotency key is in progress"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InvalidTransition(Conflict):
    type_slug = "invalid-transition"
    title = "Invalid state transition"


class MaterialUnreadable(Conflict):
    """A filing material that storage no longer gives back as it was uploaded: gone,
    damaged, or not what its digest says."""


class ApprovalExpired(Conflict):
    type_slug = "approval-expired"
    title = "The approval request has expired"


class SealMaySignNot(ClientError):
    """The seal exists and the client may use it, but it may not sign now (reason in slug)."""

    status = 409
    title = "Seal may not sign now"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, type_slug=f"seal-{reason}")
        self.reason = reason


class RequestTimeout(ClientError):
    status = 408
    type_slug = "request-timeout"
    title = "Request timeout"


class PayloadTooLarge(ClientError):
    status = 413
    type_slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(ClientError):
    status = 415
    type_slug = "unsupported-media-type"
    title = "Unsupported media type"


class Unprocessable(ClientError):
    status = 422
    type_slug = "unprocessable"
    title = "Unprocessable content"


class ValidationFailed(Unprocessable):
    type_slug = "validation-failed"
    title = "Validation failed"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, message: str) -> ValidationFailed:
        return cls([FieldError(field, message)])


class BadDocument(Unprocessable):
    type_slug = "bad-document"
    title = "The document cannot be processed"


class TooManyRequests(ClientError):
    status = 429
    type_slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ServiceUnavailable(SealGateError):
    """A dependency is down; the request may be retried later."""

    status = 503
    type_slug = "service-unavailable"
    title = "Service unavailable"
    retry_after: float = 1.0


class HsmUnavailable(ServiceUnavailable):
    type_slug = "hsm-unavailable"
    title = "The HSM is unavailable"


class StorageUnavailable(ServiceUnavailable):
    type_slug = "storage-unavailable"
    title = "Storage is unavailable"


class AuthorityUnreachable(ServiceUnavailable):
    """A filing authority that must take part in the request cannot be reached now."""

    type_slug = "authority-unavailable"
    title = "The filing authority is unavailable"


class Overloaded(ServiceUnavailable):
    type_slug = "overloaded"
    title = "Too busy; retry shortly"


class WrappedDataInvalid(SealGateError):
    """Data wrapped under the token's key (a data key) does not unwrap with it: changed in
    storage, or wrapped by another token (a token made anew, a backup of another)."""

    type_slug = "wrapped-data-invalid"
    title = "Stored key material does not unwrap"


class HsmError(SealGateError):
    """The HSM answered but refused an operation (a bug or a misconfigured key), not an outage."""

    type_slug = "hsm-error"
    title = "HSM operation failed"
