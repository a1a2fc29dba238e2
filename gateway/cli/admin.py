"""`sealgate clients|keys|seals …`: what security teams and operators do by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.cli.approvals import add_identity, file_request, officer
from gateway.cli.common import OPERATOR, add_token_out, hand_out, opened, print_json
from gateway.cli.filings import register_seal_commands


def register(sub: Any) -> None:
    clients = sub.add_parser("clients", help="API clients and their tokens").add_subparsers(
        dest="action", required=True)
    create = clients.add_parser("create", help="create a client; prints its token once")
    create.add_argument("name")
    create.add_argument("--role", required=True)
    create.add_argument("--seal", action="append", default=[], help="grant a seal (repeatable)")
    create.add_argument("--token-file", type=Path,
                        help="a key officer's token: grants and privileged roles need dual "
                             "control, so the client is then filed as an approval request")
    create.add_argument("--as", dest="as_name", metavar="CLIENT_NAME")
    add_token_out(create)
    create.set_defaults(handler=clients_create)
    clients.add_parser("list").set_defaults(handler=clients_list)
    for action, help_text in (("revoke", "revoke a client's token"),
                              ("rotate", "issue a new token; the old one stops working")):
        p = clients.add_parser(action, help=help_text)
        p.add_argument("client", help="client id or name")
        p.add_argument("--token-file", type=Path,
                       help="for a key officer: to revoke, any officer's token (filed for "
                            "approval); to rotate, that officer's own current token")
        p.add_argument("--as", dest="as_name", metavar="CLIENT_NAME")
        if action == "rotate":
            add_token_out(p)
        p.set_defaults(handler=clients_change, change=action)
    grant = clients.add_parser("grant", help="request a seal grant (dual control)")
    grant.add_argument("client")
    grant.add_argument("seal")
    grant.add_argument("--format", action="append", default=[], dest="formats",
                       help="only this signing format (repeatable; default: all)")
    add_identity(grant)
    grant.set_defaults(handler=clients_grant)
    ungrant = clients.add_parser("ungrant", help="take a seal grant away")
    ungrant.add_argument("client")
    ungrant.add_argument("seal")
    ungrant.set_defaults(handler=clients_ungrant)
    set_role = clients.add_parser("set-role", help="request a role change (dual control)")
    set_role.add_argument("client")
    set_role.add_argument("role")
    add_identity(set_role)
    set_role.set_defaults(handler=clients_set_role)

    keys = sub.add_parser("keys", help="keys in the HSM").add_subparsers(dest="action",
                                                                        required=True)
    create = keys.add_parser("create", help="generate a key pair inside the HSM")
    create.add_argument("label")
    create.add_argument("--algorithm", default="rsa-2048")
    create.add_argument("--usage-limit", type=int, help="signatures the key may ever make")
    create.set_defaults(handler=keys_create)
    keys.add_parser("list").set_defaults(handler=keys_list)
    csr = keys.add_parser("csr", help="print a CSR signed inside the HSM")
    csr.add_argument("key_id")
    csr.add_argument("--common-name", required=True)
    csr.add_argument("--organization", default="")
    csr.add_argument("--country", default="CN")
    csr.set_defaults(handler=keys_csr)
    certify = keys.add_parser(
        "certify", help="have the development CA certify a key (for trials, not production)")
    certify.add_argument("key_id")
    certify.add_argument("--common-name", required=True)
    certify.add_argument("--organization", default="")
    certify.set_defaults(handler=keys_certify)
    imp = keys.add_parser("import-certificate", help="attach a PEM chain (leaf first)")
    imp.add_argument("key_id")
    imp.add_argument("pem_file", type=Path)
    imp.set_defaults(handler=keys_import)
    disable = keys.add_parser("disable")
    disable.add_argument("key_id")
    disable.set_defaults(handler=keys_disable)
    destroy = keys.add_parser("destroy", help="request destroying a disabled key (dual control)")
    destroy.add_argument("key_id")
    add_identity(destroy)
    destroy.set_defaults(handler=keys_destroy)

    seals = sub.add_parser("seals", help="seals").add_subparsers(dest="action", required=True)
    create_seal = seals.add_parser("create", help="a seal in draft, on a certified key")
    create_seal.add_argument("name", help="e.g. 合同专用章")
    create_seal.add_argument("--type", required=True, help="seal type code 01..05 or 99")
    create_seal.add_argument("--organization", required=True, help="the organisation's name")
    create_seal.add_argument("--uscc", required=True, help="its unified social credit code")
    create_seal.add_argument("--key", required=True, dest="key_id", help="the key's id")
    create_seal.add_argument("--image", type=Path, help="a PNG of the seal (default: drawn)")
    create_seal.set_defaults(handler=seals_create)
    seals.add_parser("list").set_defaults(handler=seals_list)
    rotate = seals.add_parser("rotate-key", help="move a seal to another key; the old one is kept")
    rotate.add_argument("seal_id")
    rotate.add_argument("key_id")
    rotate.set_defaults(handler=seals_rotate_key)
    render = seals.add_parser("render-image", help="draw a standard round seal image (PNG)")
    render.add_argument("--organization", required=True)
    render.add_argument("--type", default="01", help="seal type code 01..05 or 99")
    render.add_argument("--code", default="", help="13-digit seal code")
    render.add_argument("--diameter-mm", type=float, default=40.0)
    render.add_argument("--out", type=Path, required=True)
    render.set_defaults(handler=seals_render)
    register_seal_commands(seals)


async def clients_create(args: argparse.Namespace) -> int:
    from gateway.auth.clients import KEY_OFFICER
    from gateway.custody import needs_dual_control
    from gateway.errors import DualControlRefused

    async with opened(args) as services:
        # Until two key officers exist nobody could approve anything, so the operator on
        # this machine makes the first two directly.
        bootstrap = (args.role == KEY_OFFICER and not args.seal
                     and await services.clients.count_active(KEY_OFFICER) < 2)
        if needs_dual_control(args.role, args.seal) and not bootstrap:
            if args.token_file is None:
                raise DualControlRefused(
                    "a client with seal grants or a privileged role needs a second key "
                    "officer's approval: pass --token-file with your key officer token")
            return await file_request(services, args, "create_client",
                                      {"name": args.name, "role": args.role, "seals": args.seal})
        client, token = await services.clients.create(args.name, args.role, args.seal,
                                                      OPERATOR.name)
    print_json(client.public())
    hand_out(token, args.token_out, "token")
    return 0


async def clients_list(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        print_json([c.public() for c in await services.clients.list()])
    return 0


async def clients_change(args: argparse.Namespace) -> int:
    from gateway.auth.clients import KEY_OFFICER
    from gateway.errors import DualControlRefused

    async with opened(args) as services:
        client = await services.clients.resolve(args.client)
        if client.role == KEY_OFFICER and client.status == "active":
            # Dual control rests on officers' identities: the operator alone may neither
            # revoke one (that would reopen the bootstrap of the first two) nor take one
            # over by rotating its token.
            if args.token_file is None:
                raise DualControlRefused(
                    f"{client.name} is a key officer: pass --token-file (see --help)")
            if args.change == "revoke":
                return await file_request(services, args, "revoke_client",
                                          {"client_id": client.id})
            if (await officer(services, args)).id != client.id:
                raise DualControlRefused(
                    "a key officer's token is rotated only with that officer's current token")
        if args.change == "revoke":
            print_json((await services.clients.revoke(client.id, OPERATOR.name)).public())
        else:
            token = await services.clients.rotate(client.id, OPERATOR.name)
            hand_out(token, args.token_out, "new token")
    return 0


async def clients_grant(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        return await file_request(services, args, "grant_seal", {
            "client_id": args.client, "seal_id": args.seal, "formats": args.formats})


async def clients_ungrant(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        client = await services.clients.resolve(args.client)
        client = await services.clients.revoke_grant(client.id, args.seal, OPERATOR.name)
        print_json(client.public())
    return 0


async def clients_set_role(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        return await file_request(services, args, "set_role",
                                  {"client_id": args.client, "role": args.role})


async def keys_create(args: argparse.Namespace) -> int:
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        print_json(public_view(await services.keys.create(args.label, args.algorithm,
                                                          OPERATOR.name, args.usage_limit)))
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


async def keys_certify(args: argparse.Namespace) -> int:
    from gateway.errors import Conflict
    from gateway.keys.registry import public_view

    async with opened(args) as services:
        ca = services.dev_ca
        if ca is None:
            raise Conflict("no development CA here (`sealgate init` makes one); import a "
                           "certificate from your CA with `keys import-certificate`")
        key = await services.keys.certify(await services.keys.get(args.key_id), ca,
                                          args.common_name, args.organization, OPERATOR.name)
        print_json(public_view(key))
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


async def keys_destroy(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        return await file_request(services, args, "destroy_key", {"key_id": args.key_id})


async def seals_create(args: argparse.Namespace) -> int:
    import base64

    from gateway.seals.registry import public_view

    body = {"name": args.name, "type": args.type, "key_id": args.key_id,
            "organization": {"name": args.organization, "uscc": args.uscc}}
    if args.image is not None:
        body["image_png"] = base64.b64encode(args.image.read_bytes()).decode("ascii")
    async with opened(args) as services:
        seal = await services.seals.create(body, OPERATOR.name)
        print_json(public_view(seal, dt.datetime.now(dt.UTC)))
    return 0


async def seals_rotate_key(args: argparse.Namespace) -> int:
    from gateway.seals.registry import public_view

    async with opened(args) as services:
        seal = await services.seals.rotate_key(args.seal_id, args.key_id, OPERATOR.name)
        print_json(public_view(seal, dt.datetime.now(dt.UTC)))
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
