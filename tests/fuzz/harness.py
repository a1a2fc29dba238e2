"""Runs PDF inputs through what the endpoints call, in a child process that can be killed.

The child seals (visible and invisible, through :class:`PdfSealer` with a real SoftHSM key),
verifies (:func:`validate_pdf_signatures`, as /v1/verify does) and reads a receipt
(as /v1/receipts/verify does), and reports per input: the outcome of each, the CPU seconds
and the growth of the peak RSS. The parent kills a child that takes too long.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import resource
import subprocess
import time
import traceback
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """What one input did in each target; ``crash`` is set for anything not a client error."""

    results: dict[str, str] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    rss_growth_mb: float = 0.0
    crash: str = ""

    def bad(self, cpu_limit: float, rss_limit_mb: float) -> str:
        if self.crash:
            return self.crash
        if self.cpu_seconds > cpu_limit:
            return f"cpu {self.cpu_seconds:.1f} s"
        if self.rss_growth_mb > rss_limit_mb:
            return f"rss +{self.rss_growth_mb:.0f} MB"
        for target, result in self.results.items():
            if result.startswith(("EXC", "INVALID")):
                return f"{target}: {result}"
        return ""


def prepare_token(directory: Path) -> dict[str, str]:
    """A SoftHSM token with one P-256 key certified by a dev CA, made once per run."""
    from gateway.hsm import Hsm, KeyAlgorithm
    from gateway.pki.devca import DevCA
    from gateway.settings import HsmSettings, SecretRef

    token = directory / "softhsm"
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(token), "sealgate"],
                   check=True, capture_output=True)
    settings = HsmSettings(pin=SecretRef(file=str(token / "user-pin")),
                           softhsm_conf=str(token / "softhsm2.conf"))
    ca = DevCA.open_or_create(directory / "ca")

    async def make() -> dict[str, str]:
        hsm = Hsm(settings)
        hsm.start()
        key_id = uuid.uuid4().bytes
        public = await hsm.generate_key(KeyAlgorithm.EC_P256, "fuzz", key_id)
        cert = ca.issue(public, "Fuzz Seal", "Fuzz Ltd")
        await hsm.close()
        from cryptography.hazmat.primitives import serialization
        return {"key_id": key_id.hex(), "pin": str(token / "user-pin"),
                "conf": str(token / "softhsm2.conf"),
                "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "ca": ca.certificate_pem.decode()}

    return asyncio.run(make())


def _child(conn: Connection, token: dict[str, str], targets: list[str]) -> None:
    asyncio.run(_serve(conn, token, targets))


async def _serve(conn: Connection, token: dict[str, str], targets: list[str]) -> None:
    from cryptography import x509

    from gateway.filing.receipt_service import _embedded_receipt
    from gateway.hsm import Hsm, KeyAlgorithm
    from gateway.settings import HsmSettings, SecretRef
    from gateway.signing import PdfSealer, PdfSealOptions, SealKey
    from gateway.signing.verify import validate_pdf_signatures
    from tests.pdf_samples import seal_png

    hsm = Hsm(HsmSettings(pin=SecretRef(file=token["pin"]), softhsm_conf=token["conf"]))
    hsm.start()
    key = SealKey.create(hsm, bytes.fromhex(token["key_id"]), KeyAlgorithm.EC_P256,
                         x509.load_pem_x509_certificate(token["cert"].encode()),
                         [x509.load_pem_x509_certificate(token["ca"].encode())])
    sealer = PdfSealer()
    png = seal_png()
    roots = [token["ca"].encode()]
    loop = asyncio.get_running_loop()
    conn.send("ready")
    while True:
        document = await loop.run_in_executor(None, conn.recv_bytes)
        outcome = Outcome()
        cpu = time.process_time()
        peak = _peak_mb()
        for target in targets:
            try:
                if target.startswith("seal"):
                    options = PdfSealOptions(visible=target == "seal-visible")
                    sealed = await sealer.seal(document, key, png if options.visible else None,
                                               options)
                    outcome.results[target] = await loop.run_in_executor(
                        None, _check_sealed, document, sealed, roots)
                    if target == "seal-visible" and outcome.results[target] == "sealed":
                        outcome.results[target + "-file"] = await _seal_file(
                            sealer, document, key, png)
                elif target == "verify":
                    reports = await loop.run_in_executor(
                        None, validate_pdf_signatures, document, roots)
                    outcome.results[target] = f"ok {len(reports)}"
                elif target == "receipt":
                    # As the receipt service does: the signatures first, which refuses what
                    # cannot be read, then the attachment.
                    await loop.run_in_executor(None, validate_pdf_signatures, document, roots)
                    found = await loop.run_in_executor(None, _embedded_receipt, document)
                    outcome.results[target] = f"ok {found is not None}"
            except Exception as exc:
                outcome.results[target] = _classify(exc)
        outcome.cpu_seconds = time.process_time() - cpu
        outcome.rss_growth_mb = _peak_mb() - peak
        conn.send(json.dumps(outcome.__dict__))


async def _seal_file(sealer: Any, document: bytes, key: Any, png: bytes) -> str:
    """The spooled path on a document sealed in memory: sealed in place too, appended only
    (its validity is that of the same seal in memory)."""
    import tempfile
    with tempfile.TemporaryFile() as file:
        file.write(document)
        try:
            await sealer.seal_file(file, key, png)
        except Exception as exc:
            return _classify(exc)
        file.seek(0)
        return _check_sealed(document, file.read(), [])


def _classify(exc: Exception) -> str:
    from gateway.errors import ClientError
    if isinstance(exc, ClientError):
        return f"4xx {exc.status} {exc.type_slug}: {str(getattr(exc, 'detail', ''))[:80]}"
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
    return f"EXC {type(exc).__name__}: {str(exc)[:120]} at {where}"


def _check_sealed(document: bytes, sealed: bytes, roots: list[bytes]) -> str:
    """A seal answered 200 must append only, and (given ``roots``) validate in pyHanko and
    pdfsig."""
    from gateway.signing.verify import validate_pdf_signatures
    if not sealed.startswith(document):
        return "INVALID: the sealed output does not start with the input"
    if not roots:
        return "sealed"
    try:
        reports = validate_pdf_signatures(sealed, roots)
    except Exception as exc:
        return f"INVALID: pyHanko cannot read the sealed output: {_classify(exc)}"
    ours = [r for r in reports if "Fuzz Seal" in r.signer]
    if not ours or not ours[-1].intact or not ours[-1].trusted:
        problems = [r.problems for r in ours] if ours else "no seal found"
        return f"INVALID: pyHanko: {problems}"
    return "sealed" if pdfsig_accepts(sealed) else "INVALID: pdfsig rejects the sealed output"


def pdfsig_accepts(sealed: bytes) -> bool:
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".pdf") as file:
        file.write(sealed)
        file.flush()
        try:
            report = subprocess.run(["pdfsig", "-nocert", file.name], capture_output=True,
                                    text=True, timeout=20, check=False)
        except subprocess.TimeoutExpired:
            return False
    # pdfsig lists the signatures in field order, not signing order; the seal is the one
    # over the whole document (a hostile document's own signatures may be anything).
    blocks = report.stdout.split("Signature #")[1:]
    return any("Total document signed" in block and "Signature is Valid" in block
               for block in blocks)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Runner:
    """A child process that runs inputs; restarted after a hang or a crash."""

    def __init__(self, token: dict[str, str], targets: list[str], timeout: float) -> None:
        self._token, self._targets, self._timeout = token, targets, timeout
        self._process: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_child, args=(child, self._token, self._targets),
                                    daemon=True)
        self._process.start()
        if not parent.poll(60):
            raise RuntimeError("the fuzz child did not start")
        parent.recv()
        self._conn = parent
        return parent

    def run(self, document: bytes) -> Outcome:
        conn = self._conn or self._start()
        conn.send_bytes(document)
        try:
            ready = conn.poll(self._timeout)
        except (EOFError, OSError):
            ready = False
        if ready:
            try:
                return Outcome(**json.loads(conn.recv()))
            except (EOFError, OSError):
                pass
        code = self._process.exitcode
        self.stop()
        return Outcome(crash=f"child died (exit {code})" if code is not None
                       else f"no answer within {self._timeout:g} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        self._process, self._conn = None, None

