"""`sealgate clients|keys|seals …`: what security teams and operators do by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import OPERATOR, opened, print_json
from gateway.cli.filings import register_seal_commands


def register(sub: Any) -> None:
    clients = sub.add_parser("clients", help="API clients and their tokens").add_subparsers(
        dest="action", required=True)
    create = clients.add_parser("create", help="create a client; prints its token once")
    create.add_argument("name")
    create.add_argument("--role", required=True)
    create.add_argument("--seal", action="append", default=[], help="grant a seal (repeatable)")
    create.set_defaults(handler=clients_create)
    clients.add_parser("list").set_defaults(handler=clients_list)
    for action, help_text in (("revoke", "revoke a client's token"),
                              ("rotate", "issue a new token; the old one stops working")):
        p = clients.add_parser(action, help=help_text)
        p.add_argument("client", help="client id or name")
        p.set_defaults(handler=clients_change, change=action)
    for action in ("grant", "ungrant"):
        p = clients.add_parser(action, help=f"{action} a seal for a client")
        p.add_argument("client")
        p.add_argument("seal")
        p.set_defaults(handler=clients_grant, change=action)

    keys = sub.add_parser("keys", help="keys in the HSM").add_subparsers(dest="action",
                                                                        required=True)
    create = keys.add_parser("create", help="generate a key pair inside the HSM")
    create.add_argument("label")
    create.add_argument("--algorithm", default="rsa-2048")
    create.set_defaults(handler=keys_create)
    keys.add_parser("list").set_defaults(handler=keys_list)
    csr = keys.add_parser("csr", help="print a CSR signed inside the HSM")
    csr.add_argument("key_id")
    csr.add_argument("--common-name", required=True)
    csr.add_argument("--organization", default="")
    csr.add_argument("--country", default="CN")
    csr.set_defaults(handler=keys_csr)
    imp = keys.add_parser("import-certificate", help="attach a PEM chain (leaf first)")
    imp.add_argument("key_id")
    imp.add_argument("pem_file", type=Path)
    imp.set_defaults(handler=keys_import)
    disable = keys.add_parser("disable")
    disable.add_argument("key_id")
    disable.set_defaults(handler=keys_disable)

    seals = sub.add_parser("seals", help="seals").add_subparsers(dest="action", required=True)
    seals.add_parser("list").set_defaults(handler=seals_list)
    render = seals.add_parser("render-image", help="draw a standard round seal image (PNG)")
    render.add_argument("--organization", required=True)
    render.add_argument("--type", default="01", help="seal type code 01..05 or 99")
    render.add_argument("--code", default="", help="13-digit seal code")
    render.add_argument("--diameter-mm", type=float, default=40.0)
    render.add_argument("--out", type=Path, required=True)
    render.set_defaults(handler=seals_render)
    register_seal_commands(seals)


async def clients_create(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        client, token = await services.clients.create(args.name, args.role, args.seal)
        await services.audit.append(OPERATOR.name, "client.created", f"client/{client.id}",
                                    {"name": client.name, "role": client.role,
                                     "seals": list(client.seals)})
    print_json(client.public())
    print(f"token (shown once, store it now): {token}", file=sys.stderr)
    return 0


async def clients_list(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        print_json([c.public() for c in await services.clients.list()])
    return 0


async def clients_change(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        client = await services.clients.resolve(args.client)
        if args.change == "revoke":
            print_json((await services.clients.revoke(client.id)).public())
        else:
            token = await services.clients.rotate(client.id)
            print(f"new token (shown once): {token}", file=sys.stderr)
        await services.audit.append(OPERATOR.name, f"client.{args.change}d",
                                    f"client/{client.id}", {})
    return 0


async def clients_grant(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        client = await services.clients.resolve(args.client)
        await services.seals.record(args.seal)
        if args.change == "grant":
            client = await services.clients.grant(client.id, args.seal)
        else:
            client = await services.clients.revoke_grant(client.id, args.seal)
        await services.audit.append(OPERATOR.name, f"client.{args.change}", f"client/{client.id}",
                                    {"seal_id": args.seal})
        print_json(client.public())
    return 0


async def keys_create(args: argparse.Namespace) -> int:
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        print_json(public_view(await services.keys.create(args.label, args.algorithm,
                                                          OPERATOR.name)))
    return 0


async def keys_list(args: argparse.Namespace) -> int:
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        print_json([public_view(k) for k in await services.keys.list()])
    return 0


async def keys_csr(args: argparse.Namespace) -> int:
    subject = {"common_name": args.common_name, "organization": args.organization,
               "country": args.country}
    async with opened(args) as services:
        sys.stdout.write((await services.keys.csr(args.key_id, subject, OPERATOR.name)).decode())
    return 0


async def keys_import(args: argparse.Namespace) -> int:
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        key = await services.keys.import_certificate(args.key_id, args.pem_file.read_bytes(),
                                                     OPERATOR.name)
        print_json(public_view(key))
    return 0


async def keys_disable(args: argparse.Namespace) -> int:
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        print_json(public_view(await services.keys.disable(args.key_id, OPERATOR.name)))
    return 0


async def seals_list(args: argparse.Namespace) -> int:
    from gateway.seals.registry import public_view

    now = dt.datetime.now(dt.UTC)
    async with opened(args) as services:
        print_json([public_view(s, now) for s in await services.seals.list_for(OPERATOR)])
    return 0


def seals_render(args: argparse.Namespace) -> int:
    from gateway.seals.image import render_round_seal, seal_type_name

    png = render_round_seal(args.organization, seal_type_name(args.type), args.code,
                            diameter_mm=args.diameter_mm)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png)} bytes, {args.diameter_mm:g} mm)")
    return 0
