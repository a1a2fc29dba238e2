"""One frozen settings tree: config/sealgate.toml, then a user file, then SEALGATE_* variables.

Secrets never sit in the tree itself: a secret is a :class:`SecretRef` naming an environment
variable or a file, read only at the moment of use. Unknown keys are errors that name the key,
so a typo in a config file cannot silently fall back to a default.

Environment overrides use double underscores between levels, e.g.
``SEALGATE_SERVER__PORT=9090`` or ``SEALGATE_HSM__PIN__FILE=/run/secrets/pin``; the value is
read as a TOML literal when it parses as one (numbers, booleans, arrays) and as a string
otherwise. ``SEALGATE_CONFIG`` names the user file; other ``SEALGATE_*`` names without a
double underscore (secrets, ``SEALGATE_CJK_FONT``) are not settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "config" / "sealgate.toml"
ENV_PREFIX = "SEALGATE_"


def path_field(default: str) -> Any:
    """A path setting: relative values are resolved against the project root when loaded."""
    return field(default=default, metadata={"path": True})


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives (an environment variable or a file), never the secret itself."""

    env: str = ""
    file: str = path_field("")

    def reveal(self) -> str:
        """Read the secret now; raise ConfigError naming the reference (not the value)."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret environment variable {self.env} is not set")
            return value
        if self.file:
            try:
                return Path(self.file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"secret file {self.file} cannot be read: {exc.strerror}"
                ) from exc
        raise ConfigError("a secret reference names neither 'env' nor 'file'")

    @property
    def configured(self) -> bool:
        return bool(self.env or self.file)

    def __repr__(self) -> str:
        return f"SecretRef(env={self.env!r}, file={self.file!r})"


DEFAULT_BODY_MEMORY_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_BYTES = 4 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    # Request bodies one worker holds at once, in memory and in spool files (api/body_budget.py);
    # past either, 503 with Retry-After. 0: 256 MiB and 4 GiB, or max_body_bytes when larger
    # (see body_memory_budget); a value set must be at least max_body_bytes.
    max_body_memory_bytes: int = 0
    max_spool_bytes: int = 0
    max_in_flight: int = 64
    # Verifications (POST /v1/verify, /v1/receipts/verify: open to anyone) per worker at
    # once; more get 503 with Retry-After.
    max_verifications: int = 2
    shutdown_timeout_seconds: float = 10.0
    # A request whose body stops arriving this long is answered 408.
    body_idle_seconds: float = 30.0
    # A worker silent this long gets no more connections; three times as long, it is
    # replaced (see gateway/server.py).
    hung_worker_seconds: float = 10.0
    # An idle keep-alive connection is closed after this long; so is one whose next request
    # has not arrived whole by then (headers sent a byte at a time).
    keepalive_seconds: float = 75.0
    # Addresses or networks of reverse proxies whose X-Forwarded-For names the client.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_body_memory_bytes", "max_spool_bytes"):
            if 0 < getattr(self, name) < self.max_body_bytes:
                raise ConfigError(f"settings key 'server.{name}' must be at least "
                                  f"server.max_body_bytes ({self.max_body_bytes})")

    @property
    def body_memory_budget(self) -> int:
        return self.max_body_memory_bytes or max(DEFAULT_BODY_MEMORY_BYTES, self.max_body_bytes)

    @property
    def spool_budget(self) -> int:
        return self.max_spool_bytes or max(DEFAULT_SPOOL_BYTES, self.max_body_bytes)


@dataclass(frozen=True)
class HsmSettings:
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "sealgate"
    pin: SecretRef = field(default_factory=SecretRef)
    softhsm_conf: str = path_field("")
    operation_timeout_seconds: float = 10.0
    retry_interval_seconds: float = 1.0
    # "auto": single signatures run on the calling thread when the module is SoftHSM (local
    # CPU work), never for another module (a network HSM's calls wait on the network).
    inline_signing: str = "auto"
    # "auto": sign batches with a copy of the key held in the session when the module is
    # SoftHSM, whose token objects re-check their file on every use (see gateway/hsm/keys.py).
    session_key_copies: str = "auto"


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "sqlite"
    sqlite_path: str = path_field("var/sealgate.db")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sealgate:"
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class PkiSettings:
    trust_roots: tuple[str, ...] = field(default=(), metadata={"path": True})
    dev_ca_dir: str = path_field("var/ca")
    # Where outsiders reach the gateway (the dev CA names its CRL there); empty: the
    # address [server] listens on, so a changed port moves it too.
    public_base_url: str = ""


@dataclass(frozen=True)
class SigningSettings:
    default_level: str = "B-B"
    max_hash_batch: int = 256
    csc_sad_ttl_seconds: int = 300
    tsa_url: str = ""
    tsa_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class TsaSettings:
    """The gateway's own RFC 3161 time-stamp authority (``POST /tsa``)."""

    allow_anonymous: bool = False
    policy_oid: str = "2.25.205891610393853788334838913953181100343"
    accuracy_seconds: int = 1


@dataclass(frozen=True)
class MetricsSettings:
    multiprocess_dir: str = path_field("var/metrics")
    refresh_seconds: float = 15.0


@dataclass(frozen=True)
class LimitsSettings:
    """Per-client request rate: a token bucket in the storage backend, shared by every worker
    and instance. ``requests_per_second = 0`` turns the limit off."""

    requests_per_second: float = 100.0
    burst: int = 200


@dataclass(frozen=True)
class IdempotencySettings:
    """How long answers to ``Idempotency-Key`` requests are kept, how claims behave, and how
    large a keyed body may be (it is held in memory, and its answer kept for the TTL)."""

    ttl_seconds: float = 86400.0
    lock_seconds: float = 30.0
    wait_seconds: float = 10.0
    max_body_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class AuditSettings:
    checkpoint_every: int = 100


@dataclass(frozen=True)
class AuthSettings:
    """Failed-authentication limits per remote address, and dual-control request lifetime."""

    failures_per_minute: float = 10.0
    failure_burst: int = 20
    approval_ttl_hours: float = 24.0


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"

    def __post_init__(self) -> None:
        # Checked here: a level logging does not know killed every worker at start-up.
        if self.level not in LOG_LEVELS:
            raise ConfigError(f"settings key 'log.level' must be one of {', '.join(LOG_LEVELS)}, "
                              f"not {self.level!r}")


@dataclass(frozen=True)
class HttpAuthoritySettings:
    """The JSON-over-HTTP filing authority (plugins/http_authority.py)."""

    name: str = "sim"
    display_name: str = "SealGate filing authority simulator"
    url: str = "http://127.0.0.1:8090"
    token: SecretRef = field(default_factory=SecretRef)
    timeout_seconds: float = 5.0
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    enabled: bool = False


@dataclass(frozen=True)
class FilingSettings:
    default_authority: str = "local"
    poll_interval_seconds: float = 2.0
    receipt_valid_days: int = 365
    http: HttpAuthoritySettings = field(default_factory=HttpAuthoritySettings)


@dataclass(frozen=True)
class Settings:
    var_dir: str = path_field("var")
    server: ServerSettings = field(default_factory=ServerSettings)
    hsm: HsmSettings = field(default_factory=HsmSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    pki: PkiSettings = field(default_factory=PkiSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    tsa: TsaSettings = field(default_factory=TsaSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    idempotency: IdempotencySettings = field(default_factory=IdempotencySettings)
    log: LogSettings = field(default_factory=LogSettings)
    filing: FilingSettings = field(default_factory=FilingSettings)

    @property
    def public_base_url(self) -> str:
        if self.pki.public_base_url:
            return self.pki.public_base_url
        host = self.server.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server.port}"

    def replace(self, **sections: Any) -> Settings:
        """A copy with whole sections or top-level values replaced (tests and the CLI use it)."""
        return dataclasses.replace(self, **sections)


def load_settings(
    user_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    defaults_file: Path = DEFAULTS_FILE,
) -> Settings:
    """Build the settings tree: defaults file, then the user file, then the environment."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for source in (defaults_file, user_file or env.get(ENV_PREFIX + "CONFIG")):
        if source:
            _merge(merged, _read_toml(Path(source)))
    _merge(merged, _environment_overrides(env))
    settings: Settings = _build(Settings, merged, "")
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"settings file {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc


def _environment_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    top_level = {f.name for f in dataclasses.fields(Settings)}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        # SEALGATE_<SECTION>__<KEY> is always a setting (a typo is an error that names it);
        # a name without "__" is one only when it is a top-level key, so that secrets kept in
        # variables such as SEALGATE_AUTHORITY_TOKEN are never mistaken for settings.
        if len(parts) == 1 and parts[0] not in top_level:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_literal(raw)
    return tree


def _parse_literal(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"settings key '{where.rstrip('.')}' must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown settings key '{where}{key}'")
    kwargs = {}
    for key, value in values.items():
        converted = _convert(hints[key], value, f"{where}{key}")
        if fields[key].metadata.get("path"):
            converted = _resolve_paths(converted)
        kwargs[key] = converted
    return cls(**kwargs)


def _resolve_paths(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_resolve_paths(v) for v in value)
    if not value:
        return value
    path = Path(value)
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"settings key '{where}' must be an array")
        return tuple(str(v) for v in value)
    if origin is types.UnionType:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not _is_exact(value, hint):
        raise ConfigError(f"settings key '{where}' must be {hint.__name__}, not {value!r}")
    # Every number here is a size, a count, a rate or a duration: NaN, infinity and values
    # below zero only ever come from a typo, and fail later in ways that name no key.
    if hint in (int, float) and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"settings key '{where}' must be a finite number of at least 0, "
                          f"not {value!r}")
    return value


def _is_exact(value: Any, hint: type) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
