"""The settings tree: defaults, a user file, SEALGATE_* variables, secrets by reference only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import PROJECT_ROOT, SecretRef, Settings, load_settings


def test_defaults_load_and_are_frozen() -> None:
    """config/sealgate.toml alone gives the embedded defaults, immutable."""
    settings = load_settings(environ={})
    assert settings.storage.backend == "sqlite"
    assert settings.server.port == 8080
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


def test_user_file_then_environment_override_defaults(tmp_path: Path) -> None:
    """A user file overrides the defaults, and SEALGATE_* variables override both."""
    user = tmp_path / "user.toml"
    user.write_text('[server]\nport = 9000\nworkers = 3\n[storage]\nbackend = "redis"\n')
    settings = load_settings(user, environ={"SEALGATE_SERVER__PORT": "9100",
                                            "SEALGATE_PKI__TRUST_ROOTS": '["/a.pem", "b.pem"]'})
    assert settings.server.port == 9100
    assert settings.server.workers == 3
    assert settings.storage.backend == "redis"
    assert settings.pki.trust_roots == ("/a.pem", str(PROJECT_ROOT / "b.pem"))


def test_config_variable_names_the_user_file(tmp_path: Path) -> None:
    """SEALGATE_CONFIG is read as the user file, not as a setting."""
    user = tmp_path / "user.toml"
    user.write_text("[server]\nmax_in_flight = 7\n")
    assert load_settings(environ={"SEALGATE_CONFIG": str(user)}).server.max_in_flight == 7


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SEALGATE_SERVER__PROT": "1"}, "server.prot"),
        ({"SEALGATE_SERVR__PORT": "1"}, "servr"),
        ({"SEALGATE_SERVER__PORT": "eighty"}, "server.port"),
        ({"SEALGATE_AUTH__APPROVAL_TTL_HOURS": "nan"}, "auth.approval_ttl_hours"),
        ({"SEALGATE_AUTH__APPROVAL_TTL_HOURS": "-1.0"}, "auth.approval_ttl_hours"),
        ({"SEALGATE_SERVER__MAX_IN_FLIGHT": "-3"}, "server.max_in_flight"),
        ({"SEALGATE_LOG__LEVEL": "debug"}, "log.level"),
    ],
)
def test_unknown_keys_and_wrong_types_are_errors_naming_the_key(
    environ: dict[str, str], named: str
) -> None:
    """A typo or a wrong type never falls back to a default silently."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(environ=environ)


def test_unknown_key_in_a_file_is_named(tmp_path: Path) -> None:
    """An unknown key in the user file is reported with its section."""
    user = tmp_path / "user.toml"
    user.write_text("[hsm]\npin_value = '1234'\n")
    with pytest.raises(ConfigError, match=r"hsm\.pin_value"):
        load_settings(user, environ={})


def test_secret_names_without_a_section_are_not_settings() -> None:
    """Variables such as SEALGATE_AUTHORITY_TOKEN hold secrets, not settings."""
    settings = load_settings(environ={"SEALGATE_AUTHORITY_TOKEN": "x", "SEALGATE_CJK_FONT": "y"})
    assert isinstance(settings, Settings)


def test_secrets_are_references_read_when_used(tmp_path: Path) -> None:
    """A secret comes from its file or variable at use; its repr shows only where it lives."""
    pin = tmp_path / "pin"
    pin.write_text("s3cret-pin\n")
    from_file = SecretRef(file=str(pin))
    assert from_file.reveal() == "s3cret-pin"
    assert "s3cret" not in repr(from_file)
    assert SecretRef(env="SG_TEST_PIN").configured
    with pytest.raises(ConfigError, match="SG_TEST_PIN") as caught:
        SecretRef(env="SG_TEST_PIN").reveal()
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        SecretRef(file=str(tmp_path / "missing")).reveal()


def test_relative_paths_are_taken_from_the_project_root() -> None:
    """Relative paths in settings resolve against the checkout, whatever the cwd."""
    settings = load_settings(environ={"SEALGATE_STORAGE__SQLITE_PATH": "var/x.db"})
    assert settings.storage.sqlite_path == str(PROJECT_ROOT / "var" / "x.db")
    assert settings.hsm.pin.file == str(PROJECT_ROOT / "var" / "softhsm" / "user-pin")


def test_the_public_address_follows_the_listening_port_unless_set() -> None:
    """The dev CA names its CRL at the public address: by default where [server] listens,
    so a changed port moves the URL in the certificates too."""
    moved = load_settings(environ={"SEALGATE_SERVER__PORT": "18090"})
    assert moved.public_base_url == "http://127.0.0.1:18090"
    ipv6 = load_settings(environ={"SEALGATE_SERVER__HOST": "::1"})
    assert ipv6.public_base_url == "http://[::1]:8080"
    named = load_settings(environ={"SEALGATE_PKI__PUBLIC_BASE_URL": "https://seal.example.cn"})
    assert named.public_base_url == "https://seal.example.cn"


def test_serve_refuses_a_silence_limit_shorter_than_two_heartbeats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workers beat once a second: a shorter limit would take healthy workers for stuck."""
    from gateway.cli import main

    monkeypatch.setenv("SEALGATE_SERVER__HUNG_WORKER_SECONDS", "1.5")
    assert main(["serve"]) != 0
    assert "server.hung_worker_seconds must be at least 2" in capsys.readouterr().err
