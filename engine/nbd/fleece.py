"""A point-in-time view of an image in use by a running QEMU: fleecing over QMP.

A guest keeps writing while its disk is backed up, so the backup reads a *fleecing* view
instead of the disk: a temporary qcow2 image whose backing node is the disk, plus a
copy-before-write filter (``blockdev-backup sync=none``) that copies each old cluster into
it before the guest's write lands. Read through an NBD export of that image, the disk
looks exactly as it was at the fleecing point, however much the guest writes meanwhile.

The fleecing point and the dirty-bitmap checkpoint are one QMP ``transaction``: the
bitmap that counted since the parent backup is frozen (disabled) and the new backup's
bitmap added in the same instant the copy-before-write starts, so the next incremental's
base is exactly this backup's point in time (``engine.changesources.qemu`` decides the
bitmap actions; this module runs them). This is the sequence libvirt's pull-mode backup
uses; ``../shared/reference/change-tracking.md`` §1.5 tested it with qemu-storage-daemon.

:func:`fleeced` yields the export's ``nbd+unix`` URI and takes everything down on the way
out, whatever happened: the export, the job (and with it the filter), the fleecing node,
its image file, and the NBD server when the engine started it. The names are fixed per
disk node (one backup of a node at a time, which the volume's ``backing-up`` status
ensures), so what a killed backup left in the daemon is found and removed by the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from . import qemu as qimg
from .client import NbdError
from .qmp import QmpClient, QmpError
from .uri import LiveAddress

log = logging.getLogger("engine.nbd")

#: ``plan(bitmaps)``: the node's dirty bitmaps (QMP ``BlockDirtyInfo`` dicts) -> the bitmap
#: actions of the fleecing transaction, and the name of the bitmap the export offers.
BitmapPlan = Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], str | None]]

TMP_PREFIX = "cinderblock-fleece-"
IMAGE_NAME = "fleece.qcow2"


def names(node: str) -> dict[str, str]:
    """The daemon-side names of a backup of ``node``: fixed, so leftovers can be found."""
    tag = hashlib.sha256(node.encode()).hexdigest()[:16]
    return {
        "fleece": f"cbf{tag}",  # a node-name: at most 31 characters
        "job": f"cinderblock-fleece-{node}",
        "export": f"cinderblock-{node}",
    }


def default_nbd_socket(address: LiveAddress) -> str:
    """Where the engine starts the daemon's NBD server when it runs none (beside the QMP
    socket, so a server a killed backup left is recognised and reused)."""
    return address.nbd or f"{address.qmp}.cinderblock-nbd"


def node_info(q: QmpClient, node: str) -> dict[str, Any]:
    """The block node ``node`` (``query-named-block-nodes``), or NbdError naming the nodes."""
    nodes = q.execute("query-named-block-nodes", flat=True) or []
    for info in nodes:
        if info.get("node-name") == node:
            return info
    known = sorted(str(n.get("node-name")) for n in nodes if str(n.get("node-name", "#"))[0] != "#")
    raise NbdError(
        f"the QEMU at {q.path} has no block node {node!r} (its named nodes: "
        f"{', '.join(known) or 'none'}): name the image's qcow2 format node"
    )


def node_size(address: LiveAddress) -> int:
    """The virtual size of the disk at ``address`` (asked over QMP)."""
    with QmpClient(address.qmp, timeout=10) as q:
        return int(node_info(q, address.node)["image"]["virtual-size"])


def _exports(q: QmpClient) -> set[str]:
    return {e.get("id") for e in q.execute("query-block-exports") or []}


def _jobs(q: QmpClient) -> set[str]:
    return {j.get("device") for j in q.execute("query-block-jobs") or []}


def _has_node(q: QmpClient, node: str) -> dict[str, Any] | None:
    for info in q.execute("query-named-block-nodes", flat=True) or []:
        if info.get("node-name") == node:
            return info
    return None


def _drop_export(q: QmpClient, export: str) -> None:
    if export in _exports(q):
        with contextlib.suppress(QmpError):  # gone meanwhile
            q.execute("block-export-del", id=export, mode="hard")
        q.wait_until(lambda: export not in _exports(q), f"remove the export {export}")


def _drop_job(q: QmpClient, job: str) -> None:
    if job in _jobs(q):
        with contextlib.suppress(QmpError):
            q.execute("block-job-cancel", device=job, force=True)
        q.wait_until(lambda: job not in _jobs(q), f"end the fleecing job {job}")


def _drop_node(q: QmpClient, node: str) -> None:
    info = _has_node(q, node)
    if info is None:
        return
    q.execute("blockdev-del", **{"node-name": node})
    # Only a fleecing directory of ours, in the temporary directory, whatever QEMU says.
    image = os.path.realpath(_image_file(info) or "/")
    parent = os.path.dirname(image)
    ours = os.path.basename(parent).startswith(TMP_PREFIX)
    if (
        os.path.basename(image) == IMAGE_NAME
        and ours
        and os.path.dirname(parent) == (os.path.realpath(tempfile.gettempdir()))
    ):
        shutil.rmtree(parent, ignore_errors=True)


def _image_file(info: dict[str, Any]) -> str:
    """The file a qcow2 node reads (its name is ``json:{…}`` once its backing is set)."""
    name = str(info.get("file") or "")
    if name.startswith("json:"):
        try:
            name = str(json.loads(name[5:]).get("file", {}).get("filename", ""))
        except (ValueError, AttributeError):
            return ""
    return name


def sweep(q: QmpClient, node: str) -> bool:
    """Remove what a killed backup of ``node`` left in the daemon; True if there was any."""
    n = names(node)
    found = bool(n["export"] in _exports(q) or n["job"] in _jobs(q) or _has_node(q, n["fleece"]))
    if found:
        log.warning("removing the fleecing view a killed backup of node %s left in QEMU", node)
        _drop_export(q, n["export"])
        _drop_job(q, n["job"])
        _drop_node(q, n["fleece"])
    return found


def _start_server(q: QmpClient, address: LiveAddress) -> tuple[str, bool]:
    """(the NBD server's socket, whether the engine started it)."""
    sock = default_nbd_socket(address)
    try:
        q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        return sock, True
    except QmpError as e:
        if "already running" not in str(e):
            raise
    if address.nbd is not None or os.path.exists(sock):
        # The owner's server (named in the location), or one a killed backup started.
        return sock, address.nbd is None
    raise NbdError(
        f"the QEMU at {address.qmp} already runs an NBD server: name its Unix socket in "
        f"the location ({address.uri}&nbd=SOCKET)"
    )


@contextlib.contextmanager
def fleeced(address: LiveAddress, plan: BitmapPlan | None = None) -> Iterator[str]:
    """A read-only point-in-time export of the disk at ``address``: yields its URI.

    ``plan`` decides the dirty-bitmap actions that go into the fleecing transaction (and
    the bitmap the export offers). Everything is taken down on the way out.
    """
    n = names(address.node)
    undo: list[tuple[str, Callable[[], None]]] = []
    q = QmpClient(address.qmp)
    try:
        info = node_info(q, address.node)
        sweep(q, address.node)
        size = int(info["image"]["virtual-size"])
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
        undo.append(("its directory", lambda: shutil.rmtree(tmp, ignore_errors=True)))
        image = os.path.join(tmp, IMAGE_NAME)
        qimg.create_image(image, size)
        q.execute(
            "blockdev-add",
            driver="qcow2",
            **{"node-name": n["fleece"]},
            file={"driver": "file", "filename": image},
            backing=address.node,
        )
        undo.append(("the fleecing node", lambda: _drop_node(q, n["fleece"])))
        sock, ours = _start_server(q, address)
        if ours:
            undo.append(("the NBD server", lambda: q.execute("nbd-server-stop")))
        actions, bitmap = plan(info.get("dirty-bitmaps", [])) if plan else ([], None)
        backup = {"device": address.node, "target": n["fleece"], "sync": "none", "job-id": n["job"]}
        q.execute("transaction", actions=[*actions, {"type": "blockdev-backup", "data": backup}])
        undo.append(("the fleecing job", lambda: _drop_job(q, n["job"])))
        export: dict[str, Any] = {
            "type": "nbd",
            "id": n["export"],
            "node-name": n["fleece"],
            "name": n["export"],
            "writable": False,
        }
        if bitmap is not None:
            export["bitmaps"] = [{"node": address.node, "name": bitmap}]
        q.execute("block-export-add", **export)
        undo.append(("the export", lambda: _drop_export(q, n["export"])))
        yield f"nbd+unix:///{n['export']}?socket={sock}"
    finally:
        left = []
        for what, step in reversed(undo):
            try:
                step()
            except (OSError, NbdError) as e:
                left.append(f"{what} ({e})")
        q.close()
        if left:
            log.warning(
                "could not take down the fleecing view of %s: %s (the next backup of the "
                "node removes it)",
                address.uri,
                "; ".join(left),
            )
