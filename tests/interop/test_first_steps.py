"""What a new user does after `make run`: the printed command seals a PDF, the CLI seals many."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.gateway_process import PROJECT_ROOT, SEALGATE, Deployment
from tests.pdf_samples import multi_page_pdf, one_page_pdf
from tests.redis_server import free_port

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """A token and var directory made the way `make run` makes them."""
    return Deployment.create(tmp_path_factory.mktemp("first-steps"))


def test_init_again_reuses_everything(installation: Deployment) -> None:
    """A second `sealgate init --demo` keeps the same demo seal and token."""
    before = json.loads((installation.var / "demo.json").read_text())
    token = (installation.var / "demo-token").read_text()
    output = installation.sealgate("init", "--demo").stdout
    assert json.loads((installation.var / "demo.json").read_text()) == before
    assert (installation.var / "demo-token").read_text() == token
    assert before["seal_id"] in output
    assert oct((installation.var / "demo-token").stat().st_mode & 0o777) == "0o600"
    assert oct((installation.directory / "softhsm" / "user-pin").stat().st_mode & 0o777) == "0o600"


def test_init_on_a_new_token_refuses_to_orphan_the_personal_data(
    installation: Deployment, tmp_path: Path
) -> None:
    """The database's personal data is encrypted under keys the old token wraps. Run on a
    token made anew, `init` stops and says so, instead of making a new wrapping key under
    which that data could never be read again."""
    other = tmp_path / "softhsm"
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(other), "sealgate"],
                   check=True)
    config = tmp_path / "sealgate.toml"
    config.write_text(installation.config.read_text().replace(
        str(installation.directory / "softhsm"), str(other)))
    env = {**installation.env, "SEALGATE_CONFIG": str(config),
           "SOFTHSM2_CONF": str(other / "softhsm2.conf")}
    done = subprocess.run([str(SEALGATE), "init", "--demo"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "personal-data keys wrapped by a token key that this token does not have" \
        in done.stderr
    listed = subprocess.run(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so",
                             "--list-objects", "--type", "secrkey", "--login", "--pin",
                             (other / "user-pin").read_text().strip()], env=env,
                            capture_output=True, text=True, check=False)
    assert "sealgate-kek" not in listed.stdout, listed.stdout


def test_printed_curl_command_seals_a_valid_pdf(
    installation: Deployment, tmp_path: Path, poppler: str
) -> None:
    """The command `sealgate init --demo` prints, run by a shell, yields a valid sealed PDF."""
    output = installation.sealgate("init", "--demo").stdout
    command = output[output.index("curl"):].strip()
    with installation.serve() as gateway:
        command = re.sub(r"http://127\.0\.0\.1:\d+", gateway.url(""), command)
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, check=False)
    assert "Signature is Valid" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "sealed.pdf").exists()


def test_batch_cli_seals_every_input(
    installation: Deployment, tmp_path: Path, poppler: str
) -> None:
    """`sealgate sign pdf` seals each input into the output directory, each valid."""
    seal_id = json.loads((installation.var / "demo.json").read_text())["seal_id"]
    inputs = []
    for name, data in (("a.pdf", one_page_pdf()), ("b.pdf", multi_page_pdf(5))):
        path = tmp_path / name
        path.write_bytes(data)
        inputs.append(str(path))
    bad = tmp_path / "c.pdf"
    bad.write_bytes(b"not a pdf")
    result = installation.sealgate("sign", "pdf", "--seal", seal_id, "--out", str(tmp_path / "out"),
                              *inputs, str(bad), check=False)
    assert result.returncode == 1
    assert "sealed 2 of 3" in result.stdout
    assert "c.pdf" in result.stderr
    for name in ("a.pdf", "b.pdf"):
        report = subprocess.run([poppler, str(tmp_path / "out" / name)], capture_output=True,
                                text=True, check=False)
        assert "Signature is Valid" in report.stdout


def test_render_image_draws_a_transparent_round_seal(
    installation: Deployment, tmp_path: Path
) -> None:
    """`sealgate seals render-image` writes a transparent PNG about 40 mm across."""
    out = tmp_path / "seal.png"
    installation.sealgate("seals", "render-image", "--organization", "示例科技有限公司",
                     "--type", "04", "--code", "1101050000001", "--out", str(out))
    with Image.open(out) as image:
        assert image.mode == "RGBA"
        assert image.getpixel((0, 0))[3] == 0
        dpi = image.info["dpi"][0]
        assert abs(image.width / dpi * 25.4 - 40) < 1


def test_expiring_lists_seals_whose_validity_ends_within_the_horizon(
    installation: Deployment,
) -> None:
    """`sealgate seals expiring --days N` lists the demo seal only when N reaches its end."""
    seal_id = json.loads((installation.var / "demo.json").read_text())["seal_id"]
    soon = json.loads(installation.sealgate("seals", "expiring", "--days", "30").stdout)
    later = json.loads(installation.sealgate("seals", "expiring", "--days", "400").stdout)
    assert seal_id not in [s["id"] for s in soon]
    assert [s["id"] for s in later] == [seal_id]
    assert 360 <= later[0]["days_left"] <= 365


def test_ordinary_mistakes_get_one_line_and_exit_2(
    installation: Deployment, tmp_path: Path
) -> None:
    """A missing file, a file that is not JSON, two inputs of one name and no workers: one
    line each on stderr, no traceback, a failing exit, and nothing sealed or served."""
    seal_id = json.loads((installation.var / "demo.json").read_text())["seal_id"]
    (tmp_path / "bad.json").write_text("{not json")
    for one in ("in1", "in2"):
        (tmp_path / one).mkdir()
        (tmp_path / one / "a.pdf").write_bytes(one_page_pdf())
    for command, says in (
        (("receipts", "verify", str(tmp_path / "missing.json")), "missing.json"),
        (("receipts", "verify", str(tmp_path / "bad.json")), "sealgate:"),
        (("keys", "import-certificate", "k", str(tmp_path / "missing.pem")), "missing.pem"),
        (("sign", "pdf", "--seal", seal_id, "--out", str(tmp_path / "out"),
          str(tmp_path / "in1" / "a.pdf"), str(tmp_path / "in2" / "a.pdf")), "a.pdf"),
        (("serve", "--workers", "0"), "server.workers must be at least 1"),
    ):
        result = installation.sealgate(*command, check=False)
        assert result.returncode != 0 and (result.returncode == 2 or command[0] == "serve")
        assert "Traceback" not in result.stderr
        assert says in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_authority_simulator_command_takes_its_options(
    installation: Deployment, tmp_path: Path
) -> None:
    """`sealgate authority-simulator --port … --token-file …`, as the README runs it, serves
    the simulated authority, which answers only the token in that file."""
    port = free_port()
    token_file = tmp_path / "authority-token"
    simulator = subprocess.Popen(
        [str(SEALGATE), "authority-simulator", "--port", str(port), "--token-file",
         str(token_file)], env=installation.env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/api/v1/filings/none", headers={
                    "Authorization": f"Bearer {token_file.read_text().strip()}"})
                status = connection.getresponse().status
                break
            except (OSError, FileNotFoundError):
                assert simulator.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert status == 404
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


def test_from_a_new_key_to_a_sealed_pdf_on_the_command_line(
    installation: Deployment, tmp_path: Path, poppler: str
) -> None:
    """The README's path, all by `sealgate`: a key, its development certificate, a seal,
    its filing with the three materials, the local approval, the receipt PDF verified, and
    a document sealed with the new seal that pdfsig accepts."""
    def run(*args: str) -> dict[str, object]:
        return dict(json.loads(installation.sealgate(*args).stdout))

    key = run("keys", "create", "finance-seal", "--algorithm", "ec-p256")
    run("keys", "certify", str(key["id"]), "--common-name", "示例科技有限公司 财务专用章",
        "--organization", "示例科技有限公司")
    seal = run("seals", "create", "财务专用章", "--type", "02", "--organization",
               "示例科技有限公司", "--uscc", "91350100M000100Y43", "--key", str(key["id"]))
    (tmp_path / "id.txt").write_text("11010519491231002X")
    filing = run("filings", "create", "--seal", str(seal["id"]), "--applicant-name", "李四",
                 "--applicant-phone", "13800000000", "--legal-name", "张三", "--legal-id-file",
                 str(tmp_path / "id.txt"))
    picture = tmp_path / "seal.png"
    installation.sealgate("seals", "render-image", "--organization", "示例科技有限公司",
                          "--type", "02", "--out", str(picture))
    for kind in ("business_license", "legal_rep_id", "seal_impression"):
        installation.sealgate("filings", "material", str(filing["id"]), kind, str(picture))
    installation.sealgate("filings", "submit", str(filing["id"]))
    approved = run("filings", "review", str(filing["id"]), "--approve")
    receipt_pdf = tmp_path / "receipt.pdf"
    installation.sealgate("receipts", "show", str(approved["receipt_number"]), "--pdf",
                          str(receipt_pdf))
    verdict = installation.sealgate("receipts", "verify", str(receipt_pdf))
    assert json.loads(verdict.stdout)["valid"] is True
    document = tmp_path / "invoice.pdf"
    document.write_bytes(one_page_pdf())
    installation.sealgate("sign", "pdf", "--seal", str(seal["id"]), "--out",
                          str(tmp_path / "sealed"), str(document))
    report = subprocess.run([poppler, str(tmp_path / "sealed" / "invoice.pdf")],
                            capture_output=True, text=True, check=False)
    assert "Signature is Valid" in report.stdout


def test_a_filing_is_withdrawn_on_the_command_line(
    installation: Deployment, tmp_path: Path
) -> None:
    """`sealgate filings withdraw` rejects a submitted filing with the reason given, and the
    seal keeps the status it had."""
    def run(*args: str) -> dict[str, object]:
        return dict(json.loads(installation.sealgate(*args).stdout))

    (tmp_path / "id.txt").write_text("11010519491231002X")
    filing = run("filings", "create", "--seal", installation.seal_id, "--action", "suspend",
                 "--applicant-name", "李四", "--applicant-phone", "13800000000",
                 "--legal-name", "张三", "--legal-id-file", str(tmp_path / "id.txt"))
    installation.sealgate("filings", "submit", str(filing["id"]))
    withdrawn = run("filings", "withdraw", str(filing["id"]), "--reason", "filed by mistake")
    assert withdrawn["status"] == "rejected"
    decision = withdrawn["decision"]
    assert isinstance(decision, dict) and decision["comment"] == "withdrawn: filed by mistake"
    seal = json.loads(installation.sealgate("seals", "list").stdout)
    assert [s["status"] for s in seal if s["id"] == installation.seal_id] == ["active"]
