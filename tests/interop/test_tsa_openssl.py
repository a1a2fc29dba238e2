"""POST /tsa as OpenSSL's RFC 3161 client sees it: queries from `openssl ts -query`, replies
checked by `openssl ts -verify` against the dev CA."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asn1crypto import tsp

from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.gateway_process import Deployment, worker_samples

pytestmark = pytest.mark.interop

QUERY = {"Content-Type": "application/timestamp-query"}


@pytest.fixture
async def world(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> AsyncIterator[World]:
    async with World.running(settings, hsm, dev_ca) as running:
        yield running


@pytest.fixture
async def signer(world: World) -> dict[str, str]:
    """Headers of a signer client (no seal needed to ask for time-stamps)."""
    _, headers = await world.client("signer")
    return headers


def openssl(*args: str) -> str:
    run = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr + run.stdout
    return run.stdout


def make_query(tmp_path: Path, name: str, *options: str) -> tuple[Path, Path]:
    """A document and `openssl ts -query` over it, as files."""
    data = tmp_path / f"{name}.txt"
    data.write_bytes(f"contract {name}: both parties agree\n".encode())
    query = tmp_path / f"{name}.tsq"
    openssl("ts", "-query", "-data", str(data), *options, "-out", str(query))
    return data, query


async def post_query(world: World, query: Path, headers: dict[str, str], tmp_path: Path) -> Path:
    """POST the query to /tsa and keep the reply as a file."""
    response = await world.http.post("/tsa", data=query.read_bytes(), headers={**headers, **QUERY})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/timestamp-reply"
    reply = tmp_path / (query.stem + ".tsr")
    reply.write_bytes(await response.read())
    return reply


def field(text: str, name: str) -> str:
    found = re.search(rf"^{name}: (.+)$", text, re.MULTILINE)
    assert found, text
    return found.group(1).strip()


async def curl_query(world: World, query: Path, headers: dict[str, str], tmp_path: Path) -> Path:
    """POST the query with curl, as the README's users do, and keep the reply as a file."""
    reply = tmp_path / (query.stem + ".tsr")
    options = [option for name, value in {**headers, **QUERY}.items()
               for option in ("-H", f"{name}: {value}")]
    # Not subprocess.run: the test server answers on this very event loop.
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail", "-X", "POST", *options, "--data-binary", f"@{query}",
        str(world.http.make_url("/tsa")), "-o", str(reply),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, errors = await curl.communicate()
    assert curl.returncode == 0, errors.decode()
    return reply


async def test_openssl_verifies_the_token_and_sees_its_nonce_and_policy(
    world: World, signer: dict[str, str], tmp_path: Path, dev_ca: DevCA, settings: Settings
) -> None:
    """openssl ts -query | curl | openssl ts -verify succeeds; nonce and policy are as asked."""
    data, query = make_query(tmp_path, "a", "-sha256", "-cert")
    reply = await curl_query(world, query, signer, tmp_path)
    verified = openssl("ts", "-verify", "-data", str(data), "-in", str(reply),
                       "-CAfile", str(dev_ca.directory / "ca.pem"))
    assert "Verification: OK" in verified
    asked = openssl("ts", "-query", "-in", str(query), "-text")
    answered = openssl("ts", "-reply", "-in", str(reply), "-text")
    assert field(answered, "Status") == "Granted."
    assert field(answered, "Nonce") == field(asked, "Nonce")
    assert field(answered, "Policy OID") == settings.tsa.policy_oid
    assert "SealGate Time-Stamping Authority" in field(answered, "TSA")


@pytest.mark.parametrize("hash_option", ["-sha384", "-sha512"])
async def test_sha384_and_sha512_queries_are_stamped(
    world: World, signer: dict[str, str], tmp_path: Path, dev_ca: DevCA, hash_option: str
) -> None:
    """The longer SHA-2 imprints are accepted and verify too."""
    data, query = make_query(tmp_path, "b", hash_option, "-cert")
    reply = await post_query(world, query, signer, tmp_path)
    assert "Verification: OK" in openssl(
        "ts", "-verify", "-data", str(data), "-in", str(reply),
        "-CAfile", str(dev_ca.directory / "ca.pem"))


async def test_serial_numbers_increase_from_one_reply_to_the_next(
    world: World, signer: dict[str, str], tmp_path: Path
) -> None:
    """Each token's serial number is larger than the one before."""
    serials = []
    for name in ("s1", "s2", "s3"):
        _, query = make_query(tmp_path, name, "-sha256", "-cert")
        reply = await post_query(world, query, signer, tmp_path)
        serials.append(int(field(openssl("ts", "-reply", "-in", str(reply), "-text"),
                                 "Serial number"), 16))
    assert serials == sorted(serials) and len(set(serials)) == 3


async def test_without_cert_request_the_tsa_certificate_is_given_separately(
    world: World, signer: dict[str, str], tmp_path: Path, dev_ca: DevCA
) -> None:
    """certReq false leaves the certificate out; openssl verifies with it passed as -untrusted."""
    data, query = make_query(tmp_path, "c", "-sha256")
    reply = await post_query(world, query, signer, tmp_path)
    ca_file = str(dev_ca.directory / "ca.pem")
    refused = subprocess.run(["openssl", "ts", "-verify", "-data", str(data), "-in", str(reply),
                              "-CAfile", ca_file], capture_output=True, text=True, check=False)
    assert "Verification: OK" not in refused.stdout
    tsa_pem = tmp_path / "tsa.pem"
    key = await world.services.keys.tsa_key()
    assert key is not None
    tsa_pem.write_text(str(key["certificate_chain_pem"]))
    assert "Verification: OK" in openssl(
        "ts", "-verify", "-data", str(data), "-in", str(reply), "-CAfile", ca_file,
        "-untrusted", str(tsa_pem))


@pytest.mark.parametrize(
    ("hash_option", "reason"),
    [("-sha1", "unrecognized or unsupported algorithm identifier"),
     ("-md5", "unrecognized or unsupported algorithm identifier")],
)
async def test_weak_hash_gets_a_rejection_reply_not_an_http_error(
    world: World, signer: dict[str, str], tmp_path: Path, hash_option: str, reason: str
) -> None:
    """SHA-1 and MD5 imprints are answered 200 with status rejection and failInfo badAlg."""
    _, query = make_query(tmp_path, "weak", hash_option)
    reply = await post_query(world, query, signer, tmp_path)
    text = openssl("ts", "-reply", "-in", str(reply), "-text")
    assert field(text, "Status") == "Rejected."
    assert reason in text


async def test_malformed_query_gets_bad_data_format(
    world: World, signer: dict[str, str], tmp_path: Path
) -> None:
    """Bytes that are no TimeStampReq are answered with failInfo badDataFormat."""
    broken = tmp_path / "broken.tsq"
    broken.write_bytes(b"\x30\x03\x02\x01")
    reply = await post_query(world, broken, signer, tmp_path)
    text = openssl("ts", "-reply", "-in", str(reply), "-text")
    assert field(text, "Status") == "Rejected."
    assert "the data submitted has the wrong format" in text


async def test_tsa_needs_a_signer_token_and_its_media_type(
    world: World, signer: dict[str, str], tmp_path: Path
) -> None:
    """No token is 401, another role is 403, another media type is 415."""
    _, query = make_query(tmp_path, "auth", "-sha256")
    body = query.read_bytes()
    assert (await world.http.post("/tsa", data=body, headers=QUERY)).status == 401
    _, auditor = await world.client("auditor")
    assert (await world.http.post("/tsa", data=body, headers={**auditor, **QUERY})).status == 403
    wrong = await world.http.post(
        "/tsa", data=body, headers={**signer, "Content-Type": "application/octet-stream"})
    assert wrong.status == 415


async def test_anonymous_time_stamps_when_settings_allow_them(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
) -> None:
    """With [tsa] allow_anonymous = true, a query without any token gets a token."""
    opened = settings.replace(tsa=dataclasses.replace(settings.tsa, allow_anonymous=True))
    async with World.running(opened, hsm, dev_ca) as world:
        data, query = make_query(tmp_path, "anon", "-sha256", "-cert")
        reply = await post_query(world, query, {}, tmp_path)
    assert "Verification: OK" in openssl(
        "ts", "-verify", "-data", str(data), "-in", str(reply),
        "-CAfile", str(dev_ca.directory / "ca.pem"))


@pytest.mark.slow
def test_serials_keep_increasing_across_worker_processes(tmp_path: Path) -> None:
    """With two `sealgate serve` workers answering, each token's serial beats the last one."""
    deployment = Deployment.create(tmp_path / "deployment")
    _, query = make_query(tmp_path, "workers", "-sha256")
    serials: list[int] = []
    with deployment.serve(workers=2) as gateway:
        for _ in range(60):  # until both workers have answered a few
            # A new connection each time: the kernel spreads connections over the workers.
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            try:
                connection.request("POST", "/tsa", body=query.read_bytes(), headers={
                    **QUERY, "Authorization": f"Bearer {deployment.token}"})
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body)
                answer = tsp.TimeStampResp.load(body)
            finally:
                connection.close()
            info = answer["time_stamp_token"]["content"]["encap_content_info"]["content"].parsed
            serials.append(info["serial_number"].native)
            answered = worker_samples(gateway.metrics_dir, "sealgate_http_requests_total",
                                      {"route": "/tsa"})
            if len(serials) >= 10 and sum(1 for n in answered.values() if n >= 2) == 2:
                break
    assert sum(1 for n in answered.values() if n >= 2) == 2, answered
    assert serials == sorted(set(serials)), serials
