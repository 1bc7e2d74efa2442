"""``cbm api``: serve the REST API standalone and manage its users.

    cbm api serve [--host 127.0.0.1] [--port 8090] [--workers 1]
    cbm api user add NAME [--aoi A ...] [--secret-stdin]     prints the secret once
    cbm api user remove NAME
    cbm api user list
    cbm api user grant NAME --aoi A [--revoke]
    cbm api rotate-link-key                                  every signed chip link stops working

The server reads ``CBM_API_DATABASE_URL`` (a login that is a member of cbm_reader; default:
the database of ``cbm db url``, reading as cbm_reader through ``SET ROLE``) and the
``CBM_STORE_*`` variables for image chips, ``CBM_API_BACKGROUNDS`` for orthophoto backgrounds (JSON
``{"<name>": "<GDAL source>"}``, :mod:`cbm_tasks.api.backgrounds`), ``CBM_API_JRC_BAND_NAMES`` (``B04``, the
default, or ``B4``: how JRC time series name Sentinel-2 bands, ``ApiConfig``). User management writes
``cbm.api_user`` and needs the owner's connection (``CBM_DATABASE_URL`` or the local cluster).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from cbm_tasks.errors import BadInputError
from cbm_tasks.ops import settings

if TYPE_CHECKING:
    from cbm_tasks.api.context import ApiConfig

__all__ = ["api_config", "register"]

DEFAULT_PORT = 8090


def api_config() -> ApiConfig:
    """Return the standalone server's settings from the environment (see the module docstring)."""
    from cbm_tasks.api.backgrounds import parse_backgrounds
    from cbm_tasks.api.context import ApiConfig  # FastAPI: only the server needs it
    from cbm_tasks.api.validation import DEFAULT_JRC_BAND_STYLE

    return ApiConfig(dsn=os.environ.get("CBM_API_DATABASE_URL") or settings.database_url(),
                     store=settings.store_config(),
                     backgrounds=parse_backgrounds(os.environ.get("CBM_API_BACKGROUNDS"), where="CBM_API_BACKGROUNDS"),
                     jrc_band_names=os.environ.get("CBM_API_JRC_BAND_NAMES") or DEFAULT_JRC_BAND_STYLE)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm api ...`` to the command line."""
    parser = subparsers.add_parser("api", help="REST API: serve it, manage its users")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    serve = commands.add_parser("serve", help="run the API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    serve.set_defaults(func=_serve)

    user = commands.add_parser("user", help="API users and their AOI grants")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a user; prints its secret once")
    add.add_argument("name")
    add.add_argument("--aoi", action="append", default=[], help="AOI to grant (repeatable)")
    add.add_argument("--secret-stdin", action="store_true", help="read a chosen secret from stdin")
    add.set_defaults(func=_add)
    remove = actions.add_parser("remove", help="delete a user and its grants")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)
    actions.add_parser("list", help="users and their AOIs").set_defaults(func=_list)
    grant = actions.add_parser("grant", help="grant (or --revoke) read access to an AOI")
    grant.add_argument("name")
    grant.add_argument("--aoi", required=True, action="append", help="AOI (repeatable)")
    grant.add_argument("--revoke", action="store_true", help="take the grant away")
    grant.set_defaults(func=_grant)
    rotate = commands.add_parser("rotate-link-key",
                                 help="new key for the signed chip links: every link handed out before stops working")
    rotate.set_defaults(func=_rotate)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # only the server needs it

    from cbm_tasks.api.app import create_app

    if args.workers != 1:
        raise BadInputError("--workers: run one process per port; put several behind a proxy to scale out")
    uvicorn.run(create_app(api_config()), host=args.host, port=args.port, log_level="info",
                access_log=False, proxy_headers=False)
    return 0


def _add(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.api import auth

    secret = sys.stdin.readline().rstrip("\n") if args.secret_stdin else None
    with db.connect(settings.database_url()) as conn:
        created = auth.add_user(conn, args.name, secret=secret, aois=tuple(args.aoi))
    sys.stdout.write(f"user {args.name} created; AOIs: {', '.join(args.aoi) or 'none'}\n")
    if secret is None:
        sys.stdout.write(f"secret (shown once): {created}\n"
                         f"HTTP Basic: {args.name} / <secret>; bearer token: {args.name}.<secret>\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.api import auth

    with db.connect(settings.database_url()) as conn:
        auth.remove_user(conn, args.name)
    sys.stdout.write(f"user {args.name} removed\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.api import auth

    with db.connect(settings.database_url()) as conn:
        users = auth.list_users(conn)
    for user in users:
        sys.stdout.write(f"{user.name}\t{','.join(user.aois) or '-'}\t{user.created_at}\n")
    return 0


def _grant(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.api import auth

    with db.connect(settings.database_url()) as conn:
        for aoi in args.aoi:
            changed = auth.grant(conn, args.name, aoi, revoke=args.revoke)
            verb = "revoked" if args.revoke else "granted"
            sys.stdout.write(f"{args.name} {aoi}: {verb if changed else 'unchanged'}\n")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.api import links

    with db.connect(settings.database_url()) as conn:
        links.rotate_key(conn)
    sys.stdout.write("chip link key rotated: every /dump link handed out before now answers 404\n")
    return 0
