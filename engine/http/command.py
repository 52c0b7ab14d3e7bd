"""The ``cinderblock serve`` subcommand: its arguments and what it runs.

engine/cli.py only hooks this in (one parser call, one dispatch); the logic is here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..errors import CinderblockError
from .limits import DEFAULT_MAX_BODY
from .server import DEFAULT_LISTEN, ServeOptions, parse_listen

__all__ = ["add_serve_parser", "run_serve"]


def add_serve_parser(groups: Any) -> argparse.ArgumentParser:
    s = groups.add_parser(
        "serve",
        help="serve Cinder's backup API over HTTP (python-cinderclient, openstacksdk, openstack)",
    )
    s.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    s.add_argument("--auth", choices=("noauth", "keystone"), default="noauth")
    s.add_argument(
        "--public-url", help="the endpoint root clients reach, for links (default: Host header)"
    )
    s.add_argument(
        "--volumes",
        default="registry",
        metavar="SOURCE",
        help="where volumes come from besides registered ones: registry (default) or "
        "lvm:VOLUME_GROUP (Cinder's LVM naming, /dev/VG/volume-<id>)",
    )
    s.add_argument("--volumes-project", help="the project an lvm: volume group belongs to")
    s.add_argument(
        "--lvm-dev-root",
        default="/dev",
        metavar="DIR",
        help="where the volume groups' directories are (default /dev)",
    )
    s.add_argument("--threads", type=int, default=16, help="HTTP worker threads (16)")
    s.add_argument(
        "--max-body",
        type=int,
        default=DEFAULT_MAX_BODY,
        help=f"largest request body in bytes ({DEFAULT_MAX_BODY}, Cinder's)",
    )
    s.add_argument(
        "--log-requests",
        action="store_true",
        help="log one line per request on stderr (method, path, status, id, time; no headers)",
    )
    s.add_argument(
        "--stop-grace",
        type=float,
        default=5.0,
        help="seconds a stop waits for requests and jobs in flight (5)",
    )
    return s


def run_serve(args: argparse.Namespace) -> int:
    from ..engine import BackupEngine
    from ..service.resolvers import resolver_from_spec
    from .auth import AuthUnavailable, auth_factory
    from .server import serve

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(f"cinderblock: error: {e}", file=sys.stderr)
        return 1
    if args.threads < 1 or args.max_body < 1 or args.stop_grace < 0:
        print(
            "cinderblock: error: --threads and --max-body must be positive, --stop-grace >= 0",
            file=sys.stderr,
        )
        return 1
    if args.log_requests:
        logging.getLogger("engine.http.access").setLevel(logging.INFO)
    try:
        auth = auth_factory(args.auth)
    except AuthUnavailable as e:
        print(f"cinderblock: error: {e}", file=sys.stderr)
        return 1
    try:
        resolver = resolver_from_spec(
            args.volumes, args.volumes_project, dev_root=args.lvm_dev_root
        )
    except CinderblockError as e:
        print(f"cinderblock: error: {e}", file=sys.stderr)
        return 1
    options = ServeOptions(
        host=host,
        port=port,
        auth=args.auth,
        public_url=args.public_url,
        threads=args.threads,
        max_body=args.max_body,
        stop_grace=args.stop_grace,
    )
    try:
        engine = BackupEngine.open(args.repo, workers=args.workers, create=False, resolver=resolver)
    except CinderblockError as e:
        print(f"cinderblock: error: {e}", file=sys.stderr)
        return 1

    def ready(url: str) -> None:
        print(f"cinderblock: serving {url} (auth {args.auth})", flush=True)

    return serve(engine, auth, options, ready=ready)
