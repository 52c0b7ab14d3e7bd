"""The ``cinderblock`` command line (also ``python -m engine``).

A thin shell over :class:`engine.BackupEngine`: parse arguments, call one method, print the
answer as a short table (or as JSON with ``--json``), and turn every error into one line on
stderr and a non-zero exit status. Long work shows a progress bar with rate and ETA when
stderr is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from . import oscalls
from .changed_extents import ChangedExtentsError
from .changed_extents import load as load_changed_extents
from .errors import ApiError, BlobNotFound, CinderblockError, RepositoryError
from .repository.layout import CONFIG
from .requests.faults import http_status
from .store import is_url, open_store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_PROJECT = "default"
CLI_MICROVERSION = "3.64"  # show every field, metadata included
# Set in the environment of the process that runs a ``backup create`` without ``--wait`` in
# the background: the fd on which it reports that the backup started (see _start_detached).
DETACH_ENV = "_CINDERBLOCK_DETACH_FD"


def _add_global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes. Only the top parser has defaults: the copies on
    each subcommand (``backup list --repo R``, as people type them) set a value only when
    given, so the option works before or after the subcommand."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--repo",
        default=default(os.environ.get("CINDERBLOCK_REPO")),
        help="repository: a directory, swift://CONTAINER[/PREFIX] or s3://BUCKET[/PREFIX] "
        "(default: $CINDERBLOCK_REPO; credentials from OS_*/ST_* or AWS_*)",
    )
    p.add_argument(
        "--project",
        default=default(os.environ.get("CINDERBLOCK_PROJECT", DEFAULT_PROJECT)),
        help="project id (default: $CINDERBLOCK_PROJECT or 'default')",
    )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    p.add_argument("--workers", type=int, default=default(2), help="concurrent jobs (default 2)")


def _add_global_options_below(p: argparse.ArgumentParser) -> None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                _add_global_options(sub, defaults=False)
                _add_global_options_below(sub)


def build_parser() -> argparse.ArgumentParser:
    p = _build_commands()
    _add_global_options_below(p)
    return p


def _build_commands() -> argparse.ArgumentParser:
    # The package's own __version__ (engine/__init__.py, always imported before this
    # module); read from the loaded package, as the layer rule forbids importing its root.
    version = getattr(sys.modules[__name__.rpartition(".")[0]], "__version__", "unknown")
    p = argparse.ArgumentParser(
        prog="cinderblock", description="Block-level incremental backups of volumes."
    )
    p.add_argument("--version", action="version", version=f"cinderblock {version}")
    _add_global_options(p, defaults=True)
    groups = p.add_subparsers(
        dest="group",
        required=True,
        metavar="{init,volume,snapshot,backup,verify,gc,bench,serve,repo}",
    )

    ini = groups.add_parser(
        "init",
        help="create the repository at --repo",
        description="Create an empty repository at --repo (or $CINDERBLOCK_REPO). Every "
        "other command needs one and never creates it. Its parent directory must exist "
        "unless --parents is given; an existing repository is left as it is.",
    )
    ini.add_argument(
        "--parents", action="store_true", help="also create missing parent directories"
    )

    vol = groups.add_parser("volume", help="register and inspect volumes").add_subparsers(
        dest="cmd", required=True
    )
    a = vol.add_parser(
        "add",
        help="register an image file, a block device or an NBD export as a volume",
        description="Register PATH as a volume: an image file, a block device, an NBD export "
        "(nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, over TLS nbds://… or "
        "nbds+unix://… with tls-certificates=DIR) or a qcow2 image the "
        "engine serves over NBD for each backup (qemu-nbd:///PATH/IMAGE.qcow2), or a disk in "
        "use by a running QEMU, read through a fleecing view (qsd:///NODE?qmp=SOCKET; "
        "docs/change-sources.md).",
    )
    a.add_argument("path")
    a.add_argument("--id", help="volume UUID (default: a new one)")
    a.add_argument("--name")
    a.add_argument("--status", default="available")
    att = a.add_mutually_exclusive_group()
    att.add_argument("--attached", dest="attached", action="store_true", default=None)
    att.add_argument("--detached", dest="attached", action="store_false")
    vol.add_parser("list", help="list volumes")
    s = vol.add_parser("show", help="show one volume (by id, unique id prefix or name)")
    s.add_argument("volume")
    rm = vol.add_parser(
        "remove",
        help="forget a registered volume; its backups are kept",
        description="Forget VOLUME (by id, unique id prefix or name) and the registrations of "
        "its snapshots. Refused while a backup of it or a restore onto it runs. Its backups "
        "are kept: they stay listed and restore to a path or another volume; registering the "
        "volume again under the same id continues their chain.",
    )
    rm.add_argument("volume")

    snap = groups.add_parser("snapshot", help="register and list snapshots").add_subparsers(
        dest="cmd", required=True
    )
    a = snap.add_parser("add", help="register a snapshot image of a volume")
    a.add_argument("volume")
    a.add_argument("path")
    a.add_argument("--id", help="snapshot UUID (default: a new one)")
    a.add_argument("--created-at", help="ISO 8601 time the snapshot was taken (default: now)")
    snap.add_parser("list", help="list snapshots")

    bk = groups.add_parser("backup", help="create, list, restore and delete backups")
    b = bk.add_subparsers(dest="cmd", required=True)
    c = b.add_parser(
        "create",
        help="back up a volume",
        description="Start a backup of VOLUME. Without --wait the command returns at once "
        "with the backup's id and status 'creating' while the backup goes on in a background "
        "process (follow it with 'backup wait ID'); with --wait it returns when the backup "
        "has finished, and exits 1 when it failed.",
    )
    c.add_argument("volume")
    c.add_argument("--name")
    c.add_argument("--description")
    c.add_argument("--container")
    c.add_argument("--incremental", action="store_true")
    c.add_argument("--force", action="store_true", help="back up even if the volume is in use")
    c.add_argument("--snapshot", help="back up this snapshot of the volume")
    c.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--changed-extents", metavar="FILE", help="changed-extents JSON (docs/)")
    c.add_argument(
        "--changes-from",
        metavar="SOURCE",
        help="read only what this change source says changed since the parent: FILE, "
        "json:FILE, rbd-diff:FILE?base=ID, thin-delta:FILE?base=ID, reflink:OLD_SNAPSHOT?base=ID, "
        "qemu-bitmap[:NAME] (docs/change-sources.md)",
    )
    c.add_argument(
        "--changes-audit",
        type=int,
        metavar="BLOCKS",
        help="blocks the change source calls unchanged to read and compare with the parent "
        "(default: min(256, 0.1%%), at least 16; 0: no audit)",
    )
    c.add_argument("--block-size", type=_size_arg, help="block size of a new chain, e.g. 1M")
    c.add_argument(
        "--wait",
        action="store_true",
        help="wait until the backup finishes; exit 1 if it failed (default: return at once)",
    )
    c.add_argument("--microversion", default="3.43")
    ls = b.add_parser("list", help="list backups")
    ls.add_argument("--name")
    ls.add_argument("--status")
    ls.add_argument("--volume")
    ls.add_argument("--sort")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--marker")
    s = b.add_parser("show", help="show one backup")
    s.add_argument("backup")
    d = b.add_parser("delete", help="delete a backup")
    d.add_argument("backup")
    d.add_argument("--force", action="store_true", help="skip the status check (admin)")
    r = b.add_parser("restore", help="restore a backup to a path or a volume id")
    r.add_argument("backup")
    r.add_argument("target")
    r.add_argument("--force", action="store_true", help="overwrite an in-use target")
    r.add_argument(
        "--allow-damaged",
        action="store_true",
        help="restore every readable block; write zeros for damaged ones and list them",
    )
    w = b.add_parser("wait", help="wait for a backup to finish")
    w.add_argument("backup")
    w.add_argument("--timeout", type=float)
    bn = groups.add_parser("bench", help="measure each backup phase on a device or image")
    bn.add_argument("source", help="block device or image file (opened read-only)")
    bn.add_argument("--limit", type=_size_arg, default=4 << 30, help="bytes to measure (4G)")
    bn.add_argument("--block-size", type=_size_arg, default=1 << 20)
    bn.add_argument("--level", type=int, default=3, help="zstd level (3)")
    bn.add_argument("--scratch", help="directory for the scratch repository (default: /tmp)")
    v = groups.add_parser("verify", help="check that backups' blocks are intact")
    v.add_argument("backup", nargs="?", help="one backup (default: every backup)")
    depth = v.add_mutually_exclusive_group()
    depth.add_argument("--deep", action="store_true", help="read and re-hash every block")
    depth.add_argument("--percent", type=float, help="re-hash a random N%% of the blocks")
    g = groups.add_parser("gc", help="remove data no backup references")
    g.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    g.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep anything younger than this (default 900)",
    )
    rp = groups.add_parser("repo", help="repository maintenance").add_subparsers(
        dest="cmd", required=True
    )
    up = rp.add_parser(
        "upgrade",
        help="upgrade a format-1 repository to format 2 (pack files) in place",
        description="Copy every block object into pack files, write index files and pack "
        "lists, switch config.json last, then remove the loose objects. Refused while a "
        "backup runs; an interrupted upgrade is resumed by running it again. Restart every "
        "engine that has the repository open afterwards.",
    )
    up.add_argument("--pack-size", type=_size_arg, default=None, help="pack size (32M)")
    from .http.command import add_serve_parser

    add_serve_parser(groups)
    return p


_json_errors = False  # --json: errors are JSON objects too (set by main)


class UsageError(Exception):
    """A command-line mistake found after parsing (an ambiguous volume, a bad --property)."""


def error(message: str, **fields: Any) -> None:
    """Say that the command failed: ``cinderblock: error: …`` on stderr, or under ``--json``
    one JSON object ``{"error": {"message": …, …}}`` on a line of its own (scripts parse it;
    stdout stays the command's answer)."""
    if _json_errors:
        body = {"message": message, **{k: v for k, v in fields.items() if v is not None}}
        print(json.dumps({"error": body}, default=str), file=sys.stderr)
    else:
        print(f"cinderblock: error: {message}", file=sys.stderr)


def human_bytes(n: int | None) -> str:
    """A byte count with a binary unit (``4.0 MiB``), for the size columns."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


def _size_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, value: Any, rows: Sequence[Sequence[Any]] | None = None) -> None:
        if self.as_json or rows is None:
            print(json.dumps(value, indent=2, default=str, allow_nan=False))
            return
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


class Progress:
    """A one-line bar on stderr: percent, rate and ETA; silent when stderr is not a TTY.

    A finished job's bar is drawn at 100% and then cleared, so the answer that follows is
    not mixed with a stale frame.
    """

    def __init__(self, label: str, total_bytes: int, stream=None) -> None:
        self.label = label
        self.total = max(1, total_bytes)
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self.drawn = False  # a frame is on the current line

    def update(self, fraction: float) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, fraction))
        elapsed = max(1e-6, time.monotonic() - self.start)
        done = fraction * self.total
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        bar = "#" * int(fraction * 30)
        eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {fraction * 100:5.1f}% {rate / 1e6:8.1f} MB/s ETA {eta_s}"
        )
        self.stream.flush()
        self.drawn = True

    def interrupt(self) -> None:
        """End the bar's line, so that a message can follow on a line of its own."""
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def close(self, finished: bool = False) -> None:
        """Draw 100% when the job ``finished``, then clear the line (cursor at its start)."""
        if not self.enabled:
            return
        if finished:
            self.update(1.0)
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.drawn = False


# ---------------------------------------------------------------------- Ctrl-C and SIGTERM
#
# While a job of this process runs (``backup create --wait``, ``backup restore``), the first
# SIGINT or SIGTERM cancels it (``BackupEngine.cancel``) and the command waits for the job to
# stop, then reports its real end; later signals are noted and change nothing, so a second
# Ctrl-C cannot tear the job apart half-way (the engine is embedded: killing the process
# would). The exit status is then 128 + the first signal. Elsewhere the first signal
# interrupts the command (KeyboardInterrupt) and later ones are ignored while it cleans up:
# never a traceback.
#
# The handler only records the signal. The cancel itself runs in _follow's loop on the main
# thread, between two waits: a handler runs between any two bytecodes of the main thread,
# possibly while it holds the catalog's lock, so calling into the engine from there could
# deadlock; and the cancel never waits for the job (``wait=False``), because a job stops only
# at its next window or run — a read held by a slow device can take long — and the loop must
# go on reporting signals and progress meanwhile.

_signals: list[int] = []
_following = False


class _Stop(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    _signals.append(signum)
    if not _following and len(_signals) == 1:
        raise _Stop(signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)


def _interrupted_status() -> int:
    return 128 + (_signals[0] if _signals else signal.SIGINT)


def _follow(
    eng,
    backup_id: str,
    label: str,
    total: int,
    timeout: float | None = None,
    *,
    project: str | None = None,
) -> dict:
    """Wait for the job on ``backup_id`` with a progress bar; return its detail view.

    With ``project`` (the job runs in this process), the first signal cancels it.
    """
    bar = Progress(label, total)
    deadline = None if timeout is None else time.monotonic() + timeout
    noted = 0
    done: dict | None = None
    try:
        while True:
            seen = len(_signals)  # before anything that a signal may interrupt
            if _following and seen > noted:
                bar.interrupt()
                what = f"backup {backup_id}"
                if label != "backup":
                    what = f"the restore of {what}"
                if noted == 0:
                    name = signal.Signals(_signals[0]).name
                    print(
                        f"cinderblock: interrupted ({name}): cancelling {what}; "
                        "waiting for it to stop",
                        file=sys.stderr,
                    )
                    if project is not None:
                        _cancel(eng, project, backup_id)
                else:
                    print(
                        f"cinderblock: still cancelling {what}; waiting for it to stop",
                        file=sys.stderr,
                    )
                noted = seen
            try:
                done = eng.wait(backup_id, timeout=0.25, microversion=CLI_MICROVERSION)
                return done
            except TimeoutError:
                row = eng.catalog.backup(backup_id) or {}
                bar.update(float(row.get("progress") or 0.0))
                if deadline is not None and time.monotonic() > deadline:
                    raise
    finally:
        # A job that ended well is drawn at 100% before the bar is cleared.
        bar.close(finished=done is not None and done.get("status") == "available" and not _signals)


def _cancel(eng, project: str, backup_id: str) -> None:
    """Ask the job to stop; it may have ended meanwhile (then there is nothing to cancel)."""
    from .errors import InvalidBackup

    with contextlib.suppress(InvalidBackup):
        eng.cancel(project, backup_id, wait=False)


def run(args: argparse.Namespace, out: Output) -> int:
    from .engine import BackupEngine

    if args.group == "bench":
        from .bench import as_json, format_table, run_bench

        # --repo swift://… or s3://… (or $CINDERBLOCK_REPO): also measure that store.
        store = args.repo if is_url(args.repo) else None
        phases = run_bench(
            args.source,
            limit=args.limit,
            block_size=args.block_size,
            level=args.level,
            workers=args.workers,
            scratch=args.scratch,
            store=store,
        )
        if out.as_json:
            out.emit(as_json(args.source, phases, store))
        else:
            print(format_table(args.source, phases))
        return EXIT_OK
    if not args.repo:
        error("no repository: pass --repo PATH or set CINDERBLOCK_REPO")
        return EXIT_USAGE
    if args.group == "init":
        return _init(args, out)
    remote = is_url(args.repo)
    if not remote and not os.path.isfile(os.path.join(args.repo, CONFIG)):
        # Never create one here: a mistyped --repo must not become an empty repository.
        return _no_repository(args)
    if args.group == "serve":
        from .http.command import run_serve

        return run_serve(args)
    if args.group == "repo":
        return _repo_upgrade(args, out)
    project = args.project
    try:
        eng = BackupEngine.open(args.repo, workers=args.workers, create=False)
    except RepositoryError as e:
        if remote and e.message.startswith("no repository here"):
            return _no_repository(args)
        raise
    with eng:
        if args.group == "verify":
            return _verify(eng, project, args, out)
        if args.group == "gc":
            grace = {} if args.grace is None else {"grace_seconds": args.grace}
            report = eng.gc(dry_run=args.dry_run, **grace)
            out.emit(report, [(k, v) for k, v in report.items()])
            return EXIT_OK
        key = (args.group, args.cmd)
        if getattr(args, "volume", None) is not None and key != ("backup", "restore"):
            args.volume = volume_id(eng, project, args.volume, args)
        if key == ("volume", "add"):
            v = eng.register_volume(
                project,
                args.id or str(uuid.uuid4()),
                args.path,
                name=args.name,
                status=args.status,
                attached=args.attached,
            )
            out.emit(v, [_VOLUME_COLUMNS, _volume_row(v)])
        elif key == ("volume", "list"):
            vols = eng.list_volumes(project)
            out.emit(vols, [_VOLUME_COLUMNS] + [_volume_row(v) for v in vols])
        elif key == ("volume", "show"):
            v = eng.get_volume(project, args.volume)
            out.emit(v, [(k, human_bytes(v[k]) if k == "size" else _cell(v[k])) for k in v])
        elif key == ("volume", "remove"):
            gone = eng.unregister_volume(project, args.volume)
            out.emit(
                gone,
                [
                    ("removed", gone["id"]),
                    ("snapshots removed", gone["snapshots_removed"]),
                    ("backups kept", gone["backups_kept"]),
                ],
            )
            if gone["backups_kept"] and not out.as_json:
                print(
                    f"cinderblock: its {gone['backups_kept']} backup(s) are kept: they restore "
                    "to a path or another volume; register the volume again under the same id "
                    "to continue their chain",
                    file=sys.stderr,
                )
        elif key == ("snapshot", "add"):
            s = eng.register_snapshot(
                project,
                args.id or str(uuid.uuid4()),
                args.volume,
                args.path,
                created_at=args.created_at,
            )
            out.emit(s, [(k, s[k]) for k in s])
        elif key == ("snapshot", "list"):
            snaps = eng.list_snapshots(project)
            out.emit(
                snaps,
                [("id", "volume_id", "status", "created_at", "path")]
                + [
                    (s["id"], s["volume_id"], s["status"], s["created_at"], s["path"])
                    for s in snaps
                ],
            )
        elif key == ("backup", "create"):
            return _create(eng, project, args, out)
        elif key == ("backup", "list"):
            filters = {
                k: v
                for k, v in (
                    ("name", args.name),
                    ("status", args.status),
                    ("volume_id", args.volume),
                )
                if v is not None
            }
            body = eng.list_backups(
                project,
                filters=filters,
                sort=args.sort,
                limit=args.limit,
                marker=args.marker,
                microversion="3.45",
                with_count=True,
            )
            bs = body["backups"]
            out.emit(
                body,
                [("id", "name", "status", "size", "incremental", "created_at")]
                + [
                    (
                        b["id"],
                        b["name"] or "",
                        b["status"],
                        f"{b['size']} GiB" if b["size"] is not None else "",
                        b["is_incremental"],
                        b["created_at"],
                    )
                    for b in bs
                ],
            )
        elif key == ("backup", "show"):
            b = eng.get_backup(project, args.backup, microversion=CLI_MICROVERSION)
            out.emit(
                b,
                [
                    (k, json.dumps(v) if isinstance(v, dict | list) else v)
                    for k, v in b.items()
                    if k != "links"
                ],
            )
        elif key == ("backup", "delete"):
            eng.delete_backup(project, args.backup, force=args.force)
            out.emit({"deleted": args.backup}, [("deleted", args.backup)])
        elif key == ("backup", "restore"):
            return _restore(eng, project, args, out)
        elif key == ("backup", "wait"):
            b = eng.get_backup(project, args.backup)
            try:
                done = _follow(
                    eng,
                    b["id"],
                    "backup",
                    (b.get("stats") or {}).get("volume_bytes", 0),
                    timeout=args.timeout,
                )
            except KeyboardInterrupt:
                # The backup runs in another process: it goes on, only the waiting stops.
                now = eng.get_backup(project, b["id"])["status"]
                print(
                    f"cinderblock: interrupted: stopped waiting; backup {b['id']} is {now}",
                    file=sys.stderr,
                )
                return _interrupted_status()
            out.emit(
                done,
                [
                    ("id", done["id"]),
                    ("status", done["status"]),
                    ("fail_reason", done["fail_reason"] or ""),
                ],
            )
            return _outcome(done)
    return EXIT_OK


_VOLUME_COLUMNS = ("id", "name", "status", "size", "path")


def _volume_row(v: dict) -> tuple:
    return (v["id"], v["name"] or "", v["status"], human_bytes(v["size"]), v["path"] or "")


def _cell(value: Any) -> Any:
    return "" if value is None else value


def volume_id(eng, project: str, text: str, args: argparse.Namespace) -> str:
    """The volume ``text`` names: a full id (passed on as it is: a driver's volumes are not
    listed), else the one volume of the project with that name, else the one whose id
    starts with it (as the openstack CLI finds resources). Ambiguity is an error that lists
    the candidates; nothing is guessed."""
    from .repository.layout import canonical_uuid

    full = canonical_uuid(text)
    if full is not None:
        return full
    if not text:
        raise UsageError("a volume must be named by its id, a unique id prefix or its name")
    vols = eng.list_volumes(project)
    matches = [v for v in vols if v["name"] == text]
    how = "named"
    if not matches:
        matches = [v for v in vols if v["id"].startswith(text.lower())]
        how = "with an id starting with"
    if len(matches) == 1:
        return matches[0]["id"]
    if not matches:
        raise UsageError(
            f"no volume named {text!r} or with an id starting with it in project {project} "
            f"(see: {_command(args, 'volume', 'list')})"
        )
    listing = ", ".join(f"{v['id']} ({v['name'] or 'no name'})" for v in matches)
    raise UsageError(f"{len(matches)} volumes {how} {text!r}: {listing}; pass the full id")


def _command(args: argparse.Namespace, *words: str, project: bool = True) -> str:
    """The cinderblock command line that runs ``words`` on this repository and project."""
    parts = ["cinderblock"]
    if args.repo != os.environ.get("CINDERBLOCK_REPO"):
        parts += ["--repo", args.repo]
    if project and args.project != os.environ.get("CINDERBLOCK_PROJECT", DEFAULT_PROJECT):
        parts += ["--project", args.project]
    return shlex.join([*parts, *words])


def _no_repository(args: argparse.Namespace) -> int:
    error(
        f"no repository at {args.repo} (create one with: {_command(args, 'init', project=False)})",
        repository=args.repo,
    )
    return EXIT_ERROR


def _init_remote(args: argparse.Namespace, out: Output) -> int:
    """``init`` of a ``swift://`` or ``s3://`` repository: the container or bucket is made
    here (and only here), then the repository config inside it."""
    from .engine import BackupEngine

    store = open_store(args.repo)
    store.ensure_ready(create=True)
    try:
        store.stat(CONFIG)
        existed = True
    except BlobNotFound:
        existed = False
    with BackupEngine.open(store, workers=args.workers, create=not existed):
        pass
    out.emit(
        {"repository": store.url, "created": not existed},
        [("repository", store.url), ("status", "already existed" if existed else "created")],
    )
    return EXIT_OK


def _repo_upgrade(args: argparse.Namespace, out: Output) -> int:
    """``repo upgrade``: format 1 to 2 in place (``engine.repository.upgrade``)."""
    from .repository import Repository
    from .repository.upgrade import upgrade

    repo = Repository.open(args.repo, create=False)
    say = None if out.as_json else (lambda msg: print(msg, file=sys.stderr))
    report = upgrade(repo, pack_size=args.pack_size, progress=say).as_dict()
    out.emit(report, [(k, _cell(v)) for k, v in report.items()])
    if report["format_before"] == 1 and not out.as_json:
        print("restart every engine that has this repository open", file=sys.stderr)
    return EXIT_OK if not report["damaged_objects"] else EXIT_ERROR


def _init(args: argparse.Namespace, out: Output) -> int:
    """Create the repository at ``--repo`` (its parent only with ``--parents``)."""
    from .engine import BackupEngine

    if is_url(args.repo):
        return _init_remote(args, out)
    root = os.path.abspath(args.repo)
    existed = os.path.isfile(os.path.join(root, CONFIG))
    parent = os.path.dirname(root)
    if not existed and not args.parents and not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        error(
            f"cannot create a repository at {args.repo}: its parent "
            f"directory {parent} {what} (pass --parents to create it)"
        )
        return EXIT_ERROR
    with BackupEngine.open(root, workers=args.workers, create=not existed):
        pass
    out.emit(
        {"repository": root, "created": not existed},
        [("repository", root), ("status", "already existed" if existed else "created")],
    )
    return EXIT_OK


def _restore(eng, project: str, args: argparse.Namespace, out: Output) -> int:
    global _following
    b = eng.get_backup(project, args.backup)
    existed = os.path.exists(args.target)
    _following = True  # from here on a signal cancels, it does not raise (see _follow)
    body = eng.restore_backup(
        project,
        args.backup,
        args.target,
        force=args.force,
        wait=False,
        allow_damaged=args.allow_damaged,
    )
    done = _follow(
        eng, b["id"], "restore", (b.get("stats") or {}).get("volume_bytes", 0), project=project
    )
    last = (done.get("stats") or {}).get("last_restore") or {}
    failed = last.get("status") == "error"
    if _signals:
        if not failed:
            end = f"completed onto {args.target} before it could be cancelled"
        elif last.get("error") != "the restore was cancelled":
            end = f"failed: {last.get('error')}"
        elif existed:
            end = f"was cancelled; {args.target} holds part of the backup: restore it again"
        else:
            end = f"was cancelled; {args.target} was not created"
        if not failed:
            out.emit(body, [("restored", b["id"]), ("target", args.target)])
        print(f"cinderblock: interrupted: the restore of backup {b['id']} {end}", file=sys.stderr)
        return _interrupted_status()
    if failed:
        error(f"restore failed: {last.get('error')}", backup_id=b["id"], target=args.target)
        if "damaged_block" in last:
            again = _command(args, "backup", "restore", b["id"], args.target, "--allow-damaged")
            print(
                "cinderblock: hint: to restore every other block (zeros where the damage is), "
                f"run: {again}",
                file=sys.stderr,
            )
        return EXIT_ERROR
    lost = last.get("lost_blocks") or []
    body = {**body, "lost_blocks": lost} if lost else body
    rows = [("restored", b["id"]), ("target", args.target)]
    if lost:
        rows.append(("lost blocks", ",".join(map(str, lost))))
        print(
            f"cinderblock: warning: {len(lost)} damaged block(s) were written as zeros: "
            + ",".join(map(str, lost[:20]))
            + (" …" if len(lost) > 20 else ""),
            file=sys.stderr,
        )
    out.emit(body, rows)
    return EXIT_OK


def _verify(eng, project: str, args: argparse.Namespace, out: Output) -> int:
    report = eng.verify(project, args.backup, deep=args.deep, percent=args.percent)
    rows = [("backup", "result", "blocks checked", "damaged blocks")]
    for b in report["backups"]:
        damaged = ",".join(map(str, b["damaged_blocks"][:20])) or "-"
        rows.append((b["id"], "ok" if b["ok"] else "DAMAGED", b["blocks_checked"], damaged))
    out.emit(report, rows)
    if not out.as_json:
        for b in report["backups"]:
            for err in b["errors"]:
                print(f"cinderblock: {b['id']}: {err}", file=sys.stderr)
    return EXIT_OK if report["ok"] else EXIT_ERROR


def _create(eng, project: str, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"volume_id": args.volume}
    for field, value in (
        ("name", args.name),
        ("description", args.description),
        ("container", args.container),
        ("snapshot_id", args.snapshot),
    ):
        if value is not None:
            body[field] = value
    if args.incremental:
        body["incremental"] = True
    if args.force:
        body["force"] = True
    if args.property:
        meta = {}
        for item in args.property:
            k, sep, v = item.partition("=")
            if not sep:
                raise UsageError(f"--property {item!r} is not KEY=VALUE")
            meta[k] = v
        body["metadata"] = meta
    changes = None
    if args.changed_extents:
        try:
            changes = load_changed_extents(args.changed_extents)
        except (OSError, ChangedExtentsError) as e:
            print(
                f"cinderblock: warning: changed extents ignored ({e}); reading the whole volume",
                file=sys.stderr,
            )
    if args.changes_from is not None and args.changed_extents:
        raise UsageError("--changes-from and --changed-extents exclude each other")
    global _following
    _following = True  # from here on a signal cancels, it does not raise (see _follow)
    answer = eng.create_backup(
        project,
        {"backup": body},
        microversion=args.microversion,
        changes=changes,
        changes_from=args.changes_from,
        changes_audit=args.changes_audit,
        block_size=args.block_size,
    )
    bid = answer["backup"]["id"]
    if not args.wait:
        shown = {"backup": {**answer["backup"], "status": "creating"}}
        out.emit(
            shown, [("id", bid), ("name", answer["backup"]["name"] or ""), ("status", "creating")]
        )
        print(
            f"cinderblock: started backup {bid}; it has not finished: follow it with: "
            f"{_command(args, 'backup', 'wait', bid)}",
            file=sys.stderr,
        )
        _detach()
        return EXIT_OK
    vol = eng.get_volume(project, args.volume)
    done = _follow(eng, bid, "backup", vol.get("size") or 0, project=project)
    stats = done.get("stats") or {}
    if stats.get("changes_refused") and (args.changes_from is None or done["is_incremental"]):
        # The engine only uses a change set measured since the parent it picked.
        what = "change source" if args.changes_from is not None else "changed extents"
        print(
            f"cinderblock: warning: {what} refused ({stats['changes_refused']}); "
            "the whole volume was read",
            file=sys.stderr,
        )
    out.emit(
        done,
        [
            ("id", bid),
            ("status", done["status"]),
            ("incremental", done["is_incremental"]),
            ("read", human_bytes(stats.get("bytes_read"))),
            ("stored", human_bytes(stats.get("bytes_stored"))),
            ("blocks changed", _cell(stats.get("blocks_changed"))),
            *([("consistency", stats["consistency"])] if stats.get("consistency") else []),
            ("fail_reason", done["fail_reason"] or ""),
        ],
    )
    if stats.get("consistency") == "live" and not out.as_json:
        print(
            f"cinderblock: warning: backup {bid} read the volume while it was in use "
            "(consistency: live): no reflink clone could be made; what was written meanwhile "
            "may be inconsistent",
            file=sys.stderr,
        )
    if _signals:
        end = done["status"]
        if done["status"] == "available":
            end += " (it finished before it could be cancelled)"
        elif done.get("fail_reason"):
            end += f": {done['fail_reason']}"
        print(f"cinderblock: interrupted: backup {bid} ended {end}", file=sys.stderr)
        return _interrupted_status()
    return _outcome(done)


def _outcome(done: dict) -> int:
    """Exit status of a finished backup; a failure is also said on stderr, with its reason."""
    if done["status"] == "available":
        return EXIT_OK
    why = done.get("fail_reason") or f"it ended {done['status']}"
    error(f"backup {done['id']} failed: {why}", backup_id=done["id"], status=done["status"])
    return EXIT_ERROR


# ---------------------------------------------------------------------- background backups
#
# The engine is embedded: a backup runs in the process that started it. So that ``backup
# create`` without ``--wait`` can return at once, the command runs itself again in a new
# session (no terminal signals reach it), relays that process's output until the backup has
# been accepted, and exits; the other process runs the backup to its end, then exits.

_detach_fd: int | None = None


def _start_detached(argv: Sequence[str], args: argparse.Namespace) -> int:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_end,),
            env={**os.environ, DETACH_ENV: str(write_end)},
            start_new_session=True,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as status:
        # Both pipes reach end-of-file when the child detaches (or exits).
        err = threading.Thread(target=_copy, args=(proc.stderr, sys.stderr), daemon=True)
        err.start()
        try:
            _copy(proc.stdout, sys.stdout)
            err.join()
            started = status.read() == b"started"
        except KeyboardInterrupt:
            # The other process is in a session of its own: the signal did not reach it.
            print(
                "cinderblock: interrupted; the backup may have started in the background "
                f"(see: {_command(args, 'backup', 'list')})",
                file=sys.stderr,
            )
            return _interrupted_status()
    if started:
        return EXIT_OK  # the backup goes on in the child
    return proc.wait()


def _copy(src, dst) -> None:
    with src:
        for chunk in iter(lambda: src.read1(1 << 16), b""):
            dst.buffer.write(chunk)
            dst.buffer.flush()


def _detach() -> None:
    """In the background process: report that the backup started and let go of the output."""
    global _detach_fd
    if _detach_fd is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = oscalls.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    with contextlib.suppress(OSError):
        oscalls.write(_detach_fd, b"started")
    os.close(_detach_fd)
    _detach_fd = None


# The engine logs each job's failure; the command says it itself, once, in its own words.
_REPORTED_HERE = (
    "backup %s failed: %s",
    "restore of backup %s failed: %s",
    "backup %s: change set refused (%s); the whole volume was read",
)


def _setup_logging() -> None:
    """Engine warnings as ``cinderblock: warning: …`` lines on stderr (never a bare one)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cinderblock: %(levelname)s: %(message)s"))
    handler.addFilter(lambda record: record.msg not in _REPORTED_HERE)
    root = logging.getLogger("engine")
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    global _detach_fd
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    global _json_errors
    _json_errors = bool(args.json)
    out = Output(args.json)
    _setup_logging()
    _install_signal_handlers()
    if DETACH_ENV in os.environ:
        _detach_fd = int(os.environ.pop(DETACH_ENV))
    elif args.group == "backup" and args.cmd == "create" and not args.wait:
        return _start_detached(argv, args)
    try:
        return run(args, out)
    except BrokenPipeError:
        return _pipe_closed()
    except UsageError as e:
        error(str(e))
    except ApiError as e:
        status = http_status(e)
        error(f"{e.message} (HTTP {status})", http_status=status, type=type(e).__name__)
    except (CinderblockError, OSError, ValueError) as e:
        error(str(e), type=type(e).__name__)
    except KeyboardInterrupt:
        print("cinderblock: interrupted", file=sys.stderr)
        return _interrupted_status()
    return EXIT_ERROR


def _pipe_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as ``cat`` does.

    Whatever is still buffered for stdout goes to /dev/null, so that the interpreter's
    final flush does not complain either; the status is that of a process killed by
    SIGPIPE."""
    with contextlib.suppress(OSError):
        devnull = oscalls.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
