"""The key lifecycle as a key officer runs it with the real `sealgate` command and checks it
with OpenSC's `pkcs11-tool`: create, CSR, certificate import, disable, and destruction under
dual control, on a token and var directory of its own."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import DevCA
from tests.cli_support import Installation, prepare

pytestmark = [pytest.mark.interop, pytest.mark.slow]

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_TOKEN_LINE = re.compile(r"token \(shown once, store it now\): (\S+)")


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    return prepare(tmp_path_factory.mktemp("var"))


def pkcs11_objects(installation: Installation) -> list[dict[str, str]]:
    """Objects on the installation's token as `pkcs11-tool --list-objects` prints them."""
    softhsm = installation.var / "softhsm"
    listing = subprocess.run(
        ["pkcs11-tool", "--module", MODULE, "--token-label", "sealgate", "--login",
         "--pin", (softhsm / "user-pin").read_text().strip(), "--list-objects"],
        env=installation.env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    objects: list[dict[str, str]] = []
    for line in listing.splitlines():
        if not line.startswith(" "):
            objects.append({"type": line.strip()})
        elif ":" in line and objects:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return objects


def objects_with_id(installation: Installation, key_id: str) -> dict[str, dict[str, str]]:
    """The key's objects by class, found by CKA_ID (the key id's 16 bytes in hex)."""
    hex_id = uuid.UUID(key_id).hex
    return {o["type"].split(" Object")[0]: o for o in pkcs11_objects(installation)
            if o.get("ID") == hex_id}


@pytest.fixture(scope="module")
def officers(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The installation's first two key officers, made directly (no one could approve them
    yet), their tokens saved to files of mode 0600 as `--token-file` wants them."""
    directory = tmp_path_factory.mktemp("officers")
    paths = []
    for name in ("officer-a", "officer-b"):
        created = installation.run("clients", "create", name, "--role", "key_officer")
        match = _TOKEN_LINE.search(created.stderr)
        assert match, created.stderr
        path = directory / f"{name}.token"
        path.touch(mode=0o600)
        path.write_text(match.group(1))
        paths.append(path)
    return paths


def test_key_lifecycle_through_the_cli_and_the_token(
    installation: Installation, officers: list[Path], tmp_path: Path
) -> None:
    """The CLI key lifecycle, checked with pkcs11-tool, ends with the key gone from the token."""
    created = json.loads(installation.run("keys", "create", "cli-seal-key",
                                          "--algorithm", "ec-p256").stdout)
    key_id = created["id"]
    assert created["status"] == "enabled"
    on_token = objects_with_id(installation, key_id)
    assert set(on_token) == {"Private Key", "Public Key"}
    private = on_token["Private Key"]
    assert private["label"] == "cli-seal-key"
    access = {a.strip() for a in private["Access"].split(",")}
    assert {"sensitive", "always sensitive", "never extractable"} <= access
    assert "extractable" not in access
    assert "sign" in private["Usage"]

    csr_pem = installation.run("keys", "csr", key_id, "--common-name", "示例科技有限公司合同专用章",
                               "--organization", "示例科技有限公司").stdout
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode() == created["public_key_pem"]

    ca = DevCA.open(installation.var / "ca")
    assert ca is not None
    wrong = ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), "x")
    (tmp_path / "wrong.pem").write_text(chain_to_pem([wrong, ca.certificate]))
    refused = installation.run("keys", "import-certificate", key_id, str(tmp_path / "wrong.pem"),
                               check=False)
    assert refused.returncode == 2
    assert "public key is not this key's public key" in refused.stderr

    public_der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert = ca.issue(public_der, "示例科技有限公司合同专用章", "示例科技有限公司")
    (tmp_path / "chain.pem").write_text(chain_to_pem([cert, ca.certificate]))
    imported = json.loads(installation.run("keys", "import-certificate", key_id,
                                           str(tmp_path / "chain.pem")).stdout)
    assert imported["certificate"]["serial"] == format(cert.serial_number, "x")
    listed = json.loads(installation.run("keys", "list").stdout)
    assert [k["status"] for k in listed if k["id"] == key_id] == ["enabled"]
    assert json.loads(installation.run("keys", "disable", key_id).stdout)["status"] == "disabled"

    first, second = officers
    filed = installation.run("keys", "destroy", key_id, "--token-file", str(first))
    approval = json.loads(filed.stdout)
    assert approval["status"] == "pending"
    assert f"sealgate approvals approve {approval['id']}" in filed.stderr

    alone = installation.run("approvals", "approve", approval["id"], "--token-file", str(first),
                             check=False)
    assert alone.returncode == 2
    assert "cannot approve it; a second key officer must" in alone.stderr
    posing = installation.run("approvals", "approve", approval["id"], "--token-file",
                              str(second), "--as", "officer-a", check=False)
    assert posing.returncode == 2
    assert set(objects_with_id(installation, key_id)) == {"Private Key", "Public Key"}

    approved = json.loads(installation.run("approvals", "approve", approval["id"],
                                           "--token-file", str(second)).stdout)
    assert approved["approval"]["status"] == "approved"
    assert objects_with_id(installation, key_id) == {}
    listed = json.loads(installation.run("keys", "list").stdout)
    assert [k["status"] for k in listed if k["id"] == key_id] == ["destroyed"]
    assert json.loads(installation.run("audit", "verify").stdout)["intact"] is True
    token_texts = {first.read_text(), second.read_text()}
    exported = installation.run("audit", "export").stdout
    assert not [t for t in token_texts if t in exported]


def test_privileged_clients_and_grants_need_two_officers_on_the_cli(
    installation: Installation, officers: list[Path]
) -> None:
    """On the CLI, a third key officer or a granted signer needs a second officer's approval."""
    seal_id = json.loads((installation.var / "demo.json").read_text())["seal_id"]
    direct = installation.run("clients", "create", "officer-c", "--role", "key_officer",
                              check=False)
    assert direct.returncode == 2
    assert "--token-file" in direct.stderr
    direct = installation.run("clients", "create", "app", "--role", "signer", "--seal", seal_id,
                              check=False)
    assert direct.returncode == 2

    filed = json.loads(installation.run("clients", "create", "app", "--role", "signer",
                                        "--seal", seal_id, "--token-file",
                                        str(officers[0])).stdout)
    assert filed["action"] == "create_client"
    pending = json.loads(installation.run("approvals", "list", "--status", "pending").stdout)
    assert filed["id"] in [p["id"] for p in pending]
    done = installation.run("approvals", "approve", filed["id"], "--token-file", str(officers[1]))
    assert json.loads(done.stdout)["result"]["client"]["seals"] == [seal_id]
    assert "token of client app (shown once" in done.stderr
    assert "sg_" not in done.stdout


def test_the_operator_cannot_take_over_or_remove_a_key_officer_alone(
    installation: Installation, officers: list[Path]
) -> None:
    """An officer's token is rotated only with that token; revoking an officer is a request."""
    first, second = officers
    for extra in ([], ["--token-file", str(first)]):
        taken = installation.run("clients", "rotate", "officer-b", *extra, check=False)
        assert taken.returncode == 2
        assert "sg_" not in taken.stdout + taken.stderr
    filed = json.loads(installation.run("clients", "revoke", "officer-b", "--token-file",
                                        str(first)).stdout)
    assert filed["action"] == "revoke_client"
    vetoed = installation.run("approvals", "reject", filed["id"], "--token-file", str(second),
                              check=False)
    assert vetoed.returncode == 2 and "about you" in vetoed.stderr
    rejected = installation.run("approvals", "reject", filed["id"], "--token-file", str(first),
                                "--reason", "not leaked after all")
    assert json.loads(rejected.stdout)["status"] == "rejected"

    old_token = second.read_text()
    rotated = installation.run("clients", "rotate", "officer-b", "--token-file", str(second),
                               "--token-out", str(second))
    assert "sg_" not in rotated.stderr
    assert second.read_text().strip() != old_token.strip()
    assert oct(second.stat().st_mode & 0o777) == "0o600"
    decided = installation.run("approvals", "list", "--status", "rejected")
    assert filed["id"] in decided.stdout
    listed = json.loads(installation.run("clients", "list").stdout)
    assert [c["status"] for c in listed if c["name"] == "officer-b"] == ["active"]
