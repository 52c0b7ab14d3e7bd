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

from .changed_extents import ChangedExtentsError
from .changed_extents import load as load_changed_extents
from .errors import ApiError, BlobNotFound, CinderblockError, RepositoryError
from .repository.layout import CONFIG
from .store import is_url, open_store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_PROJECT = "default"
CLI_MICROVERSION = "3.64"  # show every field, metadata included
# Set in the environment of the process that runs a ``backup create`` without ``--wait`` in
# the background: the fd on which it reports that the backup started (see _start_detached).
DETACH_ENV = "_CINDERBLOCK_DETACH_FD"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cinderblock", description="Block-level incremental backups of volumes."
    )
    p.add_argument(
        "--repo",
        default=os.environ.get("CINDERBLOCK_REPO"),
        help="repository: a directory, swift://CONTAINER[/PREFIX] or s3://BUCKET[/PREFIX] "
        "(default: $CINDERBLOCK_REPO; credentials from OS_*/ST_* or AWS_*)",
    )
    p.add_argument(
        "--project",
        default=os.environ.get("CINDERBLOCK_PROJECT", DEFAULT_PROJECT),
        help="project id (default: $CINDERBLOCK_PROJECT or 'default')",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--workers", type=int, default=2, help="concurrent jobs (default 2)")
    groups = p.add_subparsers(
        dest="group", required=True, metavar="{init,volume,snapshot,backup,verify,gc,bench}"
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
    a = vol.add_parser("add", help="register an image file or block device as a volume")
    a.add_argument("path")
    a.add_argument("--id", help="volume UUID (default: a new one)")
    a.add_argument("--name")
    a.add_argument("--status", default="available")
    att = a.add_mutually_exclusive_group()
    att.add_argument("--attached", dest="attached", action="store_true", default=None)
    att.add_argument("--detached", dest="attached", action="store_false")
    vol.add_parser("list", help="list volumes")
    s = vol.add_parser("show", help="show one volume")
    s.add_argument("volume")

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
    return p


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
            print(json.dumps(value, indent=2, default=str))
            return
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


class Progress:
    """A one-line bar on stderr: percent, rate and ETA; silent when stderr is not a TTY."""

    def __init__(self, label: str, total_bytes: int) -> None:
        self.label = label
        self.total = max(1, total_bytes)
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()

    def update(self, fraction: float) -> None:
        if not self.enabled:
            return
        elapsed = max(1e-6, time.monotonic() - self.start)
        done = fraction * self.total
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        bar = "#" * int(fraction * 30)
        eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] {fraction * 100:5.1f}% {rate / 1e6:8.1f} MB/s ETA {eta_s}"
        )
        sys.stderr.flush()

    def interrupt(self) -> None:
        """End the bar's line, so that a message can follow on a line of its own."""
        if self.enabled:
            sys.stderr.write("\n")

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------- Ctrl-C and SIGTERM
#
# While a job of this process runs (``backup create --wait``, ``backup restore``), a signal
# never raises: stopping the process would kill the job half-way (the engine is embedded),
# so _follow notices the signal, says so, and reports the job's real end; the exit status is
# then 128 + the signal. Elsewhere the first signal interrupts the command (KeyboardInterrupt)
# and later ones are ignored while it cleans up: never a traceback.
# TODO(cancellation): BackupEngine.cancel exists now (tests/faults/test_cancel.py); calling
# it from here on the first signal stalled the follow loop in a first try (the next signal
# was never noted), so the CLI still waits for the job's real end until that is understood.

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


def _follow(eng, backup_id: str, label: str, total: int, timeout: float | None = None) -> dict:
    bar = Progress(label, total)
    deadline = None if timeout is None else time.monotonic() + timeout
    noted = 0
    try:
        while True:
            if _following and len(_signals) > noted:
                bar.interrupt()
                what = f"backup {backup_id}"
                if label != "backup":
                    what = f"the restore of {what}"
                if noted == 0:
                    name = signal.Signals(_signals[0]).name
                    print(
                        f"cinderblock: interrupted ({name}): {what} cannot be cancelled; "
                        "waiting for it to end",
                        file=sys.stderr,
                    )
                else:
                    print(f"cinderblock: still waiting for {what} to end", file=sys.stderr)
                noted = len(_signals)
            try:
                return eng.wait(backup_id, timeout=0.25, microversion=CLI_MICROVERSION)
            except TimeoutError:
                row = eng.catalog.backup(backup_id) or {}
                bar.update(float(row.get("progress") or 0.0))
                if deadline is not None and time.monotonic() > deadline:
                    raise
    finally:
        bar.close()


def run(args: argparse.Namespace, out: Output) -> int:
    from .engine import BackupEngine

    if args.group == "bench":
        from .bench import format_table, run_bench

        phases = run_bench(
            args.source,
            limit=args.limit,
            block_size=args.block_size,
            level=args.level,
            workers=args.workers,
            scratch=args.scratch,
        )
        if out.as_json:
            out.emit(
                [{**p.__dict__, "mb_per_s": p.mb_per_s, "cpu_per_gb": p.cpu_per_gb} for p in phases]
            )
        else:
            print(format_table(args.source, phases))
        return EXIT_OK
    if not args.repo:
        raise SystemExit(
            "cinderblock: error: no repository: pass --repo PATH or set CINDERBLOCK_REPO"
        )
    if args.group == "init":
        return _init(args, out)
    remote = is_url(args.repo)
    if not remote and not os.path.isfile(os.path.join(args.repo, CONFIG)):
        # Never create one here: a mistyped --repo must not become an empty repository.
        return _no_repository(args)
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
        if key == ("volume", "add"):
            v = eng.register_volume(
                project,
                args.id or str(uuid.uuid4()),
                args.path,
                name=args.name,
                status=args.status,
                attached=args.attached,
            )
            out.emit(
                v,
                [
                    ("id", "name", "status", "size", "path"),
                    (v["id"], v["name"] or "", v["status"], v["size"], v["path"]),
                ],
            )
        elif key == ("volume", "list"):
            vols = eng.list_volumes(project)
            out.emit(
                vols,
                [("id", "name", "status", "size", "path")]
                + [(v["id"], v["name"] or "", v["status"], v["size"], v["path"]) for v in vols],
            )
        elif key == ("volume", "show"):
            v = eng.get_volume(project, args.volume)
            out.emit(v, [(k, v[k]) for k in v])
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
                        b["size"],
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


def _command(args: argparse.Namespace, *words: str, project: bool = True) -> str:
    """The cinderblock command line that runs ``words`` on this repository and project."""
    parts = ["cinderblock"]
    if args.repo != os.environ.get("CINDERBLOCK_REPO"):
        parts += ["--repo", args.repo]
    if project and args.project != os.environ.get("CINDERBLOCK_PROJECT", DEFAULT_PROJECT):
        parts += ["--project", args.project]
    return shlex.join([*parts, *words])


def _no_repository(args: argparse.Namespace) -> int:
    print(
        f"cinderblock: error: no repository at {args.repo} "
        f"(create one with: {_command(args, 'init', project=False)})",
        file=sys.stderr,
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
        print(
            f"cinderblock: error: cannot create a repository at {args.repo}: its parent "
            f"directory {parent} {what} (pass --parents to create it)",
            file=sys.stderr,
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
    _following = True  # from here on a signal is reported, not raised (see _follow)
    body = eng.restore_backup(project, args.backup, args.target, force=args.force, wait=False)
    done = _follow(eng, b["id"], "restore", (b.get("stats") or {}).get("volume_bytes", 0))
    last = (done.get("stats") or {}).get("last_restore") or {}
    failed = last.get("status") == "error"
    if failed:
        print(f"cinderblock: error: restore failed: {last.get('error')}", file=sys.stderr)
    else:
        out.emit(body, [("restored", b["id"]), ("target", args.target)])
    if _signals:
        print(
            f"cinderblock: interrupted: the restore of backup {b['id']} "
            + ("failed" if failed else f"completed onto {args.target}"),
            file=sys.stderr,
        )
        return _interrupted_status()
    return EXIT_ERROR if failed else EXIT_OK


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
                raise SystemExit(f"cinderblock: error: --property {item!r} is not KEY=VALUE")
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
    global _following
    _following = True  # from here on a signal is reported, not raised (see _follow)
    answer = eng.create_backup(
        project,
        {"backup": body},
        microversion=args.microversion,
        changes=changes,
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
    done = _follow(eng, bid, "backup", vol.get("size") or 0)
    stats = done.get("stats") or {}
    if stats.get("changes_refused"):
        # The engine only uses a change set measured since the parent it picked.
        print(
            f"cinderblock: warning: changed extents refused ({stats['changes_refused']}); "
            "the whole volume was read",
            file=sys.stderr,
        )
    out.emit(
        done,
        [
            ("id", bid),
            ("status", done["status"]),
            ("incremental", done["is_incremental"]),
            ("bytes read", stats.get("bytes_read")),
            ("bytes stored", stats.get("bytes_stored")),
            ("blocks changed", stats.get("blocks_changed")),
            ("fail_reason", done["fail_reason"] or ""),
        ],
    )
    status = _outcome(done)
    if _signals:
        print(f"cinderblock: interrupted: backup {bid} ended {done['status']}", file=sys.stderr)
        return _interrupted_status()
    return status


def _outcome(done: dict) -> int:
    """Exit status of a finished backup; a failure is also said on stderr, with its reason."""
    if done["status"] == "available":
        return EXIT_OK
    why = done.get("fail_reason") or f"it ended {done['status']}"
    print(f"cinderblock: error: backup {done['id']} failed: {why}", file=sys.stderr)
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
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    with contextlib.suppress(OSError):
        os.write(_detach_fd, b"started")
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
    out = Output(args.json)
    _setup_logging()
    _install_signal_handlers()
    if DETACH_ENV in os.environ:
        _detach_fd = int(os.environ.pop(DETACH_ENV))
    elif args.group == "backup" and args.cmd == "create" and not args.wait:
        return _start_detached(argv, args)
    try:
        return run(args, out)
    except ApiError as e:
        print(f"cinderblock: error: {e.message} (HTTP {e.http_status})", file=sys.stderr)
    except (CinderblockError, OSError, ValueError) as e:
        print(f"cinderblock: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("cinderblock: interrupted", file=sys.stderr)
        return _interrupted_status()
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
