"""The least an HTTP signing service can do: a yardstick for the gateway's one-hash path.

``python -m benchmarks.floor PORT`` with a JSON object on stdin (module, SoftHSM config,
token label, PIN file, key id and certificate chain) serves ``POST
/v1/seals/{id}/sign/hash`` in the gateway's request and answer format and does nothing
else: no authentication, no seal checks, no rate limit, no storage, no audit, no metrics.
It logs in as the raw ceiling does, signs on the event loop (one ``C_Sign`` per digest,
like the gateway's inline signing on SoftHSM) and answers the signatures, the algorithm and
the chain. Started with as many processes as the gateway has workers (SO_REUSEPORT spreads
the connections) and driven by the same load generator, it shows how near any aiohttp
service can come to raw PKCS#11 on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from benchmarks.baselines import find_token
from gateway.hsm import HASHES

SHA256_WITH_RSA = "1.2.840.113549.1.1.11"


def create_app(config: dict[str, Any]) -> web.Application:
    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    os.environ["SOFTHSM2_CONF"] = config["softhsm_conf"]
    token = find_token(pkcs11.lib(config["module"]), config["token_label"])
    session = token.open(user_pin=Path(config["pin_file"]).read_text().strip())
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY,
                          id=uuid.UUID(config["key_id"]).bytes)
    prefix = HASHES["sha256"].digest_info_prefix
    chain = [base64.b64encode(c.public_bytes(Encoding.DER)).decode()
             for c in x509.load_pem_x509_certificates(config["chain_pem"].encode())]

    async def sign_hash(request: web.Request) -> web.Response:
        body = await request.json()
        signatures = [key.sign(prefix + base64.b64decode(h), mechanism=Mechanism.RSA_PKCS)
                      for h in body["hashes"]]
        return web.json_response({
            "signatures": [base64.b64encode(s).decode() for s in signatures],
            "signature_algorithm": SHA256_WITH_RSA, "certificate_chain": chain,
            "sealing_receipt": str(uuid.uuid4()),
        })

    async def close(_: web.Application) -> None:
        session.close()

    app = web.Application()
    app.router.add_post("/v1/seals/{id}/sign/hash", sign_hash)
    app.on_cleanup.append(close)
    return app


async def serve(port: int, config: dict[str, Any]) -> None:
    """Serve until SIGTERM; print ``ready`` once the port is listened on."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1]), json.loads(sys.stdin.read())))


if __name__ == "__main__":
    main()
