"""`sealgate init` (dev CA, platform key, demo organisation and seal) and `sealgate serve`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from gateway import privacy
from gateway.cli.common import OPERATOR, opened, settings_from
from gateway.errors import ConfigError

DEMO_ORGANIZATION = {"name": "示例科技有限公司", "uscc": "91350100M000100Y43"}
DEMO_LEGAL_REPRESENTATIVE = {"name": "张三", "id_number": "11010519491231002X"}
DEMO_APPLICANT = {"name": "李四", "phone": "13800000000"}
DEMO_CLIENT = "demo-app"


def register(sub: Any) -> None:
    init = sub.add_parser(
        "init", help="prepare var/: dev CA, platform key; --demo adds a filed seal"
    )
    init.add_argument(
        "--demo",
        action="store_true",
        help="also create a demo organisation, key, filed seal and signer client",
    )
    init.set_defaults(handler=init_command)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--workers", type=int, help="worker processes (default from settings)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from gateway import server

    settings = settings_from(args)
    # `is not None`: --port 0 (any free port) is an override too.
    overrides = {k: getattr(args, k) for k in ("host", "port", "workers")
                 if getattr(args, k) is not None}
    settings = settings.replace(server=dataclasses.replace(settings.server, **overrides))
    if settings.server.workers < 1:
        raise ConfigError("server.workers must be at least 1")
    if settings.server.hung_worker_seconds < 2 * server.HEARTBEAT_SECONDS:
        # A worker beats once a second; less than two beats' time would call healthy
        # workers silent.
        raise ConfigError(f"server.hung_worker_seconds must be at least "
                          f"{2 * server.HEARTBEAT_SECONDS:g}")
    logging.getLogger().setLevel(settings.log.level)  # the master logs at the workers' level
    server.serve(settings, settings.server.workers)
    return 0


async def init_command(args: argparse.Namespace) -> int:
    from gateway.pki.devca import DevCA, crl_url
    from gateway.services import audit_key_file

    settings = settings_from(args)
    var = Path(settings.var_dir)
    var.mkdir(parents=True, exist_ok=True)
    ca = DevCA.open_or_create(Path(settings.pki.dev_ca_dir),
                              crl_url=crl_url(settings.public_base_url))
    async with opened(args) as services:
        if not await services.hsm.has_wrapping_key() and await services.storage.list(
                privacy.KIND, limit=1):
            # A new wrapping key would make the personal data in storage unreadable for good.
            raise ConfigError(
                "storage holds personal-data keys wrapped by a token key that this token "
                "does not have: use the token they were made with (or its backup), or "
                "point [storage] at this token's database")
        await services.hsm.ensure_wrapping_key()
        platform = await services.keys.ensure_platform_key(ca)
        print(f"platform receipt key: {platform['id']} ({platform['algorithm']})")
        tsa = await services.keys.ensure_tsa_key(ca)
        print(f"time-stamping key: {tsa['id']} ({tsa['algorithm']})")
        audit_key = await services.keys.ensure_audit_key()
        key_file = audit_key_file(settings)
        if not key_file.exists():
            key_file.write_text(str(audit_key["public_key_pem"]))
        print(f"audit checkpoint key: {audit_key['id']} (public key in {key_file})")
        if args.demo:
            demo = await _ensure_demo(services, ca, var)
            _print_first_steps(settings.server.host, settings.server.port, demo)
    return 0


async def _ensure_demo(services: Any, ca: Any, var: Path) -> dict[str, str]:
    from gateway.errors import NotFound

    state_file = var / "demo.json"
    token_file = var / "demo-token"
    if state_file.exists() and token_file.exists():
        state = json.loads(state_file.read_text())
        try:
            await services.seals.record(state["seal_id"])
            return {**state, "token_file": str(token_file)}
        except NotFound:
            pass
    key = await services.keys.create("demo-contract-seal", "rsa-2048", OPERATOR.name)
    await services.keys.certify(key, ca, DEMO_ORGANIZATION["name"] + " 合同专用章",
                                DEMO_ORGANIZATION["name"], OPERATOR.name)
    seal = await services.seals.create(
        {
            "name": "合同专用章",
            "type": "04",
            "organization": DEMO_ORGANIZATION,
            "key_id": key["id"],
        },
        OPERATOR.name,
    )
    await services.filings.file_and_approve_locally(
        seal["id"],
        DEMO_APPLICANT,
        DEMO_LEGAL_REPRESENTATIVE,
        OPERATOR.name,
    )
    existing = await services.clients.find_by_name(DEMO_CLIENT)
    if existing is not None:
        await services.clients.grant(existing.id, seal["id"])
        token = await services.clients.rotate(existing.id)
    else:
        _, token = await services.clients.create(DEMO_CLIENT, "signer", [seal["id"]])
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    state = {"seal_id": seal["id"], "key_id": key["id"]}
    state_file.write_text(json.dumps(state, indent=2))
    return {**state, "token_file": str(token_file)}


def _print_first_steps(host: str, port: int, demo: dict[str, str]) -> None:
    sample = Path(__file__).resolve().parents[2] / "config" / "examples" / "sample.pdf"
    base = f"http://{host}:{port}"
    token = f"$(cat {shlex.quote(demo['token_file'])})"
    print(f"""
Demo seal {demo["seal_id"]} is filed and active. Once the gateway is up, seal a PDF with:

  curl -sS -X POST -H "Authorization: Bearer {token}" \\
       -H 'Content-Type: application/pdf' --data-binary @{sample} \\
       '{base}/v1/seals/{demo["seal_id"]}/sign/pdf' -o sealed.pdf && pdfsig sealed.pdf
""")
