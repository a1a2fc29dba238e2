"""Fixtures every test suite shares: a real SoftHSM token, the HSM layer on it, a dev CA.

One token and one :class:`Hsm` serve the whole test session, because PKCS#11 allows one login
per process (a second ``open(user_pin=…)`` fails) and SoftHSM wants one session per process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import HsmSettings, SecretRef, Settings, load_settings
from tests.redis_server import RedisServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SoftHSM token made by the same script `make run` uses."""
    directory = tmp_path_factory.mktemp("softhsm")
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(directory), "sealgate"],
                   check=True)
    os.environ["SOFTHSM2_CONF"] = str(directory / "softhsm2.conf")
    return directory


@pytest.fixture(scope="session")
def hsm_settings(token_dir: Path) -> HsmSettings:
    return HsmSettings(
        token_label="sealgate",
        pin=SecretRef(file=str(token_dir / "user-pin")),
        softhsm_conf=str(token_dir / "softhsm2.conf"),
        retry_interval_seconds=0.2,
    )


@pytest.fixture(scope="session")
async def hsm(hsm_settings: HsmSettings) -> AsyncIterator[Hsm]:
    """The test session's one HSM layer, with the data-key wrapping key in place."""
    layer = Hsm(hsm_settings)
    layer.start()
    await layer.ensure_wrapping_key()
    yield layer
    await layer.close()


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.open_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def settings(tmp_path: Path, hsm_settings: HsmSettings, dev_ca: DevCA) -> Settings:
    """Defaults from config/sealgate.toml, pointed at this test's temp dir and the test token."""
    base = load_settings(environ={})
    return base.replace(
        var_dir=str(tmp_path),
        hsm=hsm_settings,
        storage=base.storage.__class__(
            **{**base.storage.__dict__, "sqlite_path": str(tmp_path / "sealgate.db")}
        ),
        pki=base.pki.__class__(trust_roots=(str(dev_ca.directory / "ca.pem"),),
                               dev_ca_dir=str(dev_ca.directory)),
    )


def new_key_id() -> bytes:
    return uuid.uuid4().bytes


@pytest.fixture(scope="session")
def key_factory(hsm: Hsm, dev_ca: DevCA):  # type: ignore[no-untyped-def]
    """Makes an HSM key with a dev-CA certificate: ``await key_factory(KeyAlgorithm.RSA_2048)``."""

    async def make(algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048, common_name: str = "Test Seal"):  # type: ignore[no-untyped-def]
        key_id = new_key_id()
        public_der = await hsm.generate_key(algorithm, f"test-{key_id.hex()[:8]}", key_id)
        cert = dev_ca.issue(public_der, common_name, "测试有限公司")
        return key_id, cert

    return make


@pytest.fixture(scope="session")
def poppler() -> Iterator[str]:
    """Path of pdfsig; the suite requires it (make test installs poppler-utils)."""
    from shutil import which

    path = which("pdfsig")
    assert path, "pdfsig (poppler-utils) is required; `make test` installs it"
    yield path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The test session's redis-server on a free loopback port (a test that stops or pauses
    Redis starts its own :class:`RedisServer` instead)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def on_redis(settings: Settings, url: str, prefix: str | None = None) -> Settings:
    """``settings`` with the Redis backend at ``url``, under a key prefix nobody else uses."""
    storage = dataclasses.replace(
        settings.storage, backend="redis", redis_url=url,
        redis_prefix=prefix or f"test:{uuid.uuid4().hex}:",
    )
    return settings.replace(storage=storage)
