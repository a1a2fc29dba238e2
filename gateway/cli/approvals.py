"""`sealgate approvals …`: dual control from the command line, each step under an officer's token.

The local operator can do everything else with full rights, but not this: a dual-control step
names the key officer taking it by that officer's own token (``--token-file``), so filing and
approving a request takes two tokens of two different key officers, exactly as over HTTP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import add_token_out, hand_out, opened, print_json

if TYPE_CHECKING:
    from gateway.auth import ApiClient
    from gateway.services import Services


def register(sub: Any) -> None:
    approvals = sub.add_parser(
        "approvals", help="dual control: requests a second key officer approves"
    ).add_subparsers(dest="action", required=True)

    request = approvals.add_parser("request", help="file a request").add_subparsers(
        dest="request_action", required=True)
    destroy = request.add_parser("destroy-key", help="destroy a disabled key in the HSM")
    destroy.add_argument("key_id")
    destroy.set_defaults(handler=request_command, build=lambda a: (
        "destroy_key", {"key_id": a.key_id}))
    grant = request.add_parser("grant-seal", help="let a client sign with a seal")
    grant.add_argument("client", help="client id or name")
    grant.add_argument("seal_id")
    grant.add_argument("--format", action="append", default=[], dest="formats",
                       help="only this signing format (repeatable; default: all)")
    grant.set_defaults(handler=request_command, build=lambda a: (
        "grant_seal", {"client_id": a.client, "seal_id": a.seal_id, "formats": a.formats}))
    role = request.add_parser("set-role", help="change a client's role")
    role.add_argument("client", help="client id or name")
    role.add_argument("role")
    role.set_defaults(handler=request_command, build=lambda a: (
        "set_role", {"client_id": a.client, "role": a.role}))
    create = request.add_parser("create-client",
                                help="create a client with a privileged role or seal grants")
    create.add_argument("name")
    create.add_argument("--role", required=True)
    create.add_argument("--seal", action="append", default=[], dest="seals")
    create.set_defaults(handler=request_command, build=lambda a: (
        "create_client", {"name": a.name, "role": a.role, "seals": a.seals}))
    revoke = request.add_parser("revoke-client", help="revoke a key officer's client")
    revoke.add_argument("client", help="client id or name")
    revoke.set_defaults(handler=request_command, build=lambda a: (
        "revoke_client", {"client_id": a.client}))
    for parser in (destroy, grant, role, create, revoke):
        add_identity(parser)

    listing = approvals.add_parser("list", help="requests, oldest first")
    listing.add_argument("--status", help="pending, approving, approved, rejected or expired")
    listing.set_defaults(handler=list_command)
    show = approvals.add_parser("show", help="one request")
    show.add_argument("approval_id")
    show.set_defaults(handler=show_command)

    approve = approvals.add_parser("approve", help="approve another officer's request; it runs")
    approve.add_argument("approval_id")
    add_identity(approve)
    add_token_out(approve)
    approve.set_defaults(handler=approve_command)
    reject = approvals.add_parser("reject", help="reject (or, as its requester, withdraw)")
    reject.add_argument("approval_id")
    reject.add_argument("--reason", default="")
    add_identity(reject)
    reject.set_defaults(handler=reject_command)


def add_identity(parser: argparse.ArgumentParser) -> None:
    """The key officer taking a dual-control step, proven by their own token."""
    parser.add_argument("--token-file", type=Path, required=True,
                        help="file holding the acting key officer's API token")
    parser.add_argument("--as", dest="as_name", metavar="CLIENT_NAME",
                        help="the officer's client name; refused unless it is the token's")


async def officer(services: Services, args: argparse.Namespace) -> ApiClient:
    """The key officer whose token is in ``--token-file``; the token is never echoed."""
    from gateway.custody import require_officer
    from gateway.errors import Unauthorized, ValidationFailed

    path: Path = args.token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValidationFailed.one("--token-file", f"cannot be read: {exc.strerror}") from None
    found = await services.clients.authenticate(token) if token else None
    if found is None:
        raise Unauthorized(f"the token in {path} is unknown or revoked")
    if args.as_name is not None and args.as_name != found.name:
        raise Unauthorized(f"the token in {path} is not {args.as_name}'s")
    require_officer(found)
    return found


async def file_request(
    services: Services, args: argparse.Namespace, action: str, params: dict[str, Any]
) -> int:
    """File a request as the officer of ``--token-file``; say how the second officer decides."""
    from gateway.clock import utcnow
    from gateway.custody import public_view

    approval = await services.approvals.request(await officer(services, args), action, params)
    print_json(public_view(approval, utcnow()))
    print(f"filed approval request {approval['id']}; a second key officer approves it with:\n"
          f"  sealgate approvals approve {approval['id']} --token-file THEIR_TOKEN_FILE",
          file=sys.stderr)
    return 0


async def request_command(args: argparse.Namespace) -> int:
    action, params = args.build(args)
    async with opened(args) as services:
        return await file_request(services, args, action, params)


async def list_command(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        print_json(await services.approvals.list(args.status))
    return 0


async def show_command(args: argparse.Namespace) -> int:
    async with opened(args) as services:
        print_json(await services.approvals.get(args.approval_id))
    return 0


async def approve_command(args: argparse.Namespace) -> int:
    from gateway.clock import utcnow
    from gateway.custody import public_view

    async with opened(args) as services:
        approval, result = await services.approvals.approve(await officer(services, args),
                                                            args.approval_id)
    token = result.pop("token", None)
    print_json({"approval": public_view(approval, utcnow()), "result": result})
    if token is not None:
        hand_out(token, args.token_out, f"token of client {result['client']['name']}")
    return 0


async def reject_command(args: argparse.Namespace) -> int:
    from gateway.clock import utcnow
    from gateway.custody import public_view

    async with opened(args) as services:
        approval = await services.approvals.reject(await officer(services, args),
                                                   args.approval_id, args.reason)
    print_json(public_view(approval, utcnow()))
    return 0
