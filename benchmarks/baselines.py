"""What the gateway is measured against, run in-process with the gateway's number of processes.

- the ceiling: python-pkcs11 calling ``C_Sign`` on the same token and key in a tight loop, one
  logged-in session per process (RSA-2048 PKCS#1 v1.5 over a SHA-256 DigestInfo, EC P-256
  raw ECDSA over a SHA-256 digest), signing with the key's token object as a script would;
  EC is measured once more signing with a session copy of the key, as the gateway signs
  batches with SoftHSM (``hsm.session_key_copies``), so that batches are also compared like
  for like;
- the alternative: a script sealing PDFs with pyHanko's own ``PdfSigner`` at its default
  settings (signature size estimated by a dry run, stamp drawn by pyHanko from the same
  seal picture), over the same HSM key through the gateway's ``HsmSigner``.

Each worker is a fresh ``spawn`` process, so PKCS#11 is initialised in the child only; the
workers wait at a barrier and then run for a fixed time (and at most a fixed count).
"""

# pyHanko's PDF object layer has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import queue
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.environment import Material

_BARRIER_TIMEOUT = 120.0


@dataclass(frozen=True)
class LoopSpec:
    processes: int
    duration: float
    max_operations: int


def _run_workers(target: Any, args: tuple[Any, ...], spec: LoopSpec) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(spec.processes)
    results = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, spec, barrier, results))
               for _ in range(spec.processes)]
    for worker in workers:
        worker.start()
    outcomes: list[dict[str, Any]] = []
    deadline = time.monotonic() + _BARRIER_TIMEOUT + spec.duration + 120
    try:
        while len(outcomes) < len(workers):
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline or not any(w.is_alive() for w in workers):
                    outcomes.append({"error": "a worker died or hung without reporting"})
                    break
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    # The first failure is the cause; the others only saw the barrier broken by it.
    failed = sorted((o["error"] for o in outcomes if "error" in o),
                    key=lambda error: error.startswith("BrokenBarrierError"))
    if failed:
        raise RuntimeError(f"a baseline worker failed: {failed[0]}")
    per_process = [o["operations"] / o["elapsed"] for o in outcomes]
    return {
        "processes": spec.processes,
        "operations": sum(o["operations"] for o in outcomes),
        "per_second": round(sum(per_process), 2),
        "per_process_per_second": [round(v, 2) for v in per_process],
        "cpu_seconds": round(sum(o["cpu"] for o in outcomes), 3),
        "elapsed_seconds": round(max(o["elapsed"] for o in outcomes), 3),
    }


# -- the ceiling: raw python-pkcs11 ---------------------------------------------------------------


def raw_pkcs11(
    material: Material, algorithm: str, spec: LoopSpec, *, session_copy: bool = False
) -> dict[str, Any]:
    key_id = (material.rsa if algorithm.startswith("rsa") else material.ec).key_id
    result = _run_workers(_raw_worker, (material, key_id, algorithm, session_copy), spec)
    return {"algorithm": algorithm, "key_object": "session copy" if session_copy else "token",
            **result}


def _raw_worker(material: Material, key_id: str, algorithm: str, session_copy: bool,
                spec: LoopSpec, barrier: Any, results: Any) -> None:
    try:
        import pkcs11
        from pkcs11 import Attribute, Mechanism, ObjectClass

        from gateway.hsm import HASHES

        os.environ["SOFTHSM2_CONF"] = material.softhsm_conf
        lib = pkcs11.lib(material.module)
        token = find_token(lib, material.token_label)
        pin = Path(material.pin_file).read_text().strip()
        with token.open(user_pin=pin) as session:
            key: Any = session.get_key(object_class=ObjectClass.PRIVATE_KEY,
                                       id=uuid.UUID(key_id).bytes)
            if session_copy:
                key = key.copy({Attribute.TOKEN: False})
            digests = [os.urandom(32) for _ in range(64)]
            if algorithm.startswith("rsa"):
                prefix = HASHES["sha256"].digest_info_prefix
                payloads = [prefix + d for d in digests]
                mechanism = Mechanism.RSA_PKCS
            else:
                payloads = digests
                mechanism = Mechanism.ECDSA
            for payload in payloads[:16]:
                key.sign(payload, mechanism=mechanism)
            barrier.wait(_BARRIER_TIMEOUT)
            count = 0
            cpu = time.process_time()
            begin = time.perf_counter()
            deadline = begin + spec.duration
            while count < spec.max_operations and time.perf_counter() < deadline:
                key.sign(payloads[count % 64], mechanism=mechanism)
                count += 1
            elapsed = time.perf_counter() - begin
            results.put({"operations": count, "elapsed": elapsed,
                         "cpu": time.process_time() - cpu})
    except Exception as exc:
        _failed(exc, barrier, results)


def find_token(lib: Any, label: str) -> Any:
    """The token, asked for again briefly: SoftHSM rewrites the token's file on every login,
    and a process listing tokens during another's login does not see it (as in
    gateway/hsm/token.py)."""
    import pkcs11.exceptions

    for attempt in range(10):
        try:
            return lib.get_token(token_label=label)
        except pkcs11.exceptions.NoSuchToken:
            if attempt == 9:
                raise
            time.sleep(0.2)
            lib.reinitialize()
    raise AssertionError("unreachable")


def _failed(exc: Exception, barrier: Any, results: Any) -> None:
    """Report the failure and release the other workers from the barrier at once."""
    barrier.abort()
    results.put({"error": f"{type(exc).__name__}: {exc}"})


# -- the alternative: pyHanko defaults ------------------------------------------------------------


def pyhanko_defaults(
    material: Material, document: Path, spec: LoopSpec, sample: Path | None = None
) -> dict[str, Any]:
    """Sealed documents per second with pyHanko's PdfSigner, the RSA-2048 seal, visible stamp."""
    result = _run_workers(_pyhanko_worker, (material, str(document),
                                            str(sample) if sample else ""), spec)
    return {"document": document.name, **result}


def _pyhanko_worker(material: Material, document: str, sample: str, spec: LoopSpec,
                    barrier: Any, results: Any) -> None:
    try:
        first = asyncio.run(_pyhanko_loop(material, Path(document).read_bytes(), spec,
                                          barrier, results))
        if sample:
            Path(sample).write_bytes(first)
    except Exception as exc:
        _failed(exc, barrier, results)


async def _pyhanko_loop(material: Material, data: bytes, spec: LoopSpec,
                        barrier: Any, results: Any) -> bytes:
    """Seal ``data`` over and over; put the rate in ``results``, return the first output."""
    from cryptography import x509
    from PIL import Image
    from pyhanko.pdf_utils.images import PdfImage
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko.stamp import StaticStampStyle

    from gateway.hsm import Hsm, KeyAlgorithm
    from gateway.settings import HsmSettings, SecretRef
    from gateway.signing import HsmSigner, Placement
    from gateway.signing.seal_key import to_asn1_certificate

    hsm = Hsm(HsmSettings(module=material.module, token_label=material.token_label,
                          pin=SecretRef(file=material.pin_file),
                          softhsm_conf=material.softhsm_conf))
    hsm.start()
    try:
        chain = [to_asn1_certificate(c) for c in
                 x509.load_pem_x509_certificates(material.rsa.chain_pem.encode())]
        signer = HsmSigner(hsm, uuid.UUID(material.rsa.key_id).bytes,
                           KeyAlgorithm(material.rsa.algorithm), chain[0], chain[1:])
        # Loaded once per process, as a script sealing many documents would; pyHanko then
        # embeds (and encodes) the picture in every document it seals.
        with Image.open(material.seal_png) as picture:
            picture.load()
            image = picture.copy()
        style = StaticStampStyle(background=PdfImage(image))

        async def seal_one(n: int) -> bytes:
            writer = IncrementalPdfFileWriter(io.BytesIO(data))
            count = int(writer.root["/Pages"]["/Count"])
            page = writer.find_page_for_modification(count - 1)[0].get_object()
            box = tuple(float(v) for v in page["/MediaBox"])
            rect = Placement().rect((box[0], box[1], box[2], box[3]),
                                    image.height / image.width)
            name = f"Seal{n}"
            pdf_signer = signers.PdfSigner(
                signers.PdfSignatureMetadata(field_name=name,
                                             subfilter=fields.SigSeedSubFilter.PADES),
                signer, stamp_style=style,
                # pyHanko annotates the box as ints but writes any real number.
                new_field_spec=fields.SigFieldSpec(
                    name, on_page=count - 1, box=rect),  # type: ignore[arg-type]
            )
            out = await pdf_signer.async_sign_pdf(writer)
            sealed: bytes = out.getvalue()
            return sealed

        first = await seal_one(0)
        barrier.wait(_BARRIER_TIMEOUT)
        count = 0
        cpu = time.process_time()
        begin = time.perf_counter()
        deadline = begin + spec.duration
        while count < spec.max_operations and time.perf_counter() < deadline:
            await seal_one(count + 1)
            count += 1
        elapsed = time.perf_counter() - begin
        results.put({"operations": count, "elapsed": elapsed, "cpu": time.process_time() - cpu})
        return first
    finally:
        await hsm.close()
