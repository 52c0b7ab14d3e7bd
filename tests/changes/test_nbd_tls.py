"""NBD over TLS (``nbds://``, ``nbds+unix://``): our client's ``NBD_OPT_STARTTLS`` against a
real ``qemu-nbd --tls-creds`` with x509 certificates made here by ``openssl``.

A backup over TLS reads what a plain one reads (data and dirty-bitmap block status) and
restores bit-exact; a server that checks its clients gets our client certificate; a CA that
did not sign the server's certificate, a wrong host name, a plain client at a TLS server and
a TLS client at a plain server each fail with an error that says what to fix.
"""

from __future__ import annotations

import socket

import pytest
from changes_helpers import qemu_io, raw_copy, require_tool, run

from engine import Repository, backup_volume, restore_volume
from engine.changesources import parse_source
from engine.errors import InvalidInput
from engine.nbd import NbdClient, NbdError, parse_nbd_uri

MIB = 1 << 20
BS = 1 << 20


def _openssl(*args: str) -> None:
    run(require_tool("openssl"), *args)


def _ca(d, name: str) -> None:
    d.mkdir()
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(d / "ca-key.pem"), "-out", str(d / "ca-cert.pem"), "-days", "2",
        "-subj", f"/CN={name}",
    )  # fmt: skip


def _issue(ca, out, stem: str, cn: str, ext: str) -> None:
    """``out/STEM-cert.pem`` + ``out/STEM-key.pem`` signed by the CA in ``ca``."""
    key, csr, cert = out / f"{stem}-key.pem", out / f"{stem}.csr", out / f"{stem}-cert.pem"
    extfile = out / f"{stem}.ext"
    extfile.write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca-cert.pem"),
        "-CAkey", str(ca / "ca-key.pem"), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    csr.unlink()
    extfile.unlink()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA; the server's directory (as qemu-nbd's tls-creds-x509 wants it); the client's
    (ca-cert.pem, client-cert.pem, client-key.pem); and a client directory of another CA."""
    root = tmp_path_factory.mktemp("pki")
    _ca(root / "ca", "cinderblock test CA")
    _ca(root / "other-ca", "another CA")
    server, client, wrong = root / "server", root / "client", root / "wrong"
    anonymous = root / "anonymous"  # the right CA, no client certificate
    for d in (server, client, wrong, anonymous):
        d.mkdir()
    _issue(
        root / "ca", server, "server", "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    _issue(root / "ca", client, "client", "cinderblock", "extendedKeyUsage=clientAuth\n")
    for d in (server, client, anonymous):
        (d / "ca-cert.pem").write_bytes((root / "ca" / "ca-cert.pem").read_bytes())
    (wrong / "ca-cert.pem").write_bytes((root / "other-ca" / "ca-cert.pem").read_bytes())
    return {"server": server, "client": client, "wrong": wrong, "anonymous": anonymous}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(exports, image, pki, *, tcp: bool = False, verify_peer: bool = False, bitmaps=()):
    """A read-only qemu-nbd with TLS: (its pid list entry is stopped at teardown) -> where."""
    exports.n += 1
    pidfile = exports.tmp / f"tls{exports.n}.pid"
    creds = f"tls-creds-x509,id=tls0,endpoint=server,dir={pki['server']}"
    creds += ",verify-peer=" + ("on" if verify_peer else "off")
    args = [require_tool("qemu-nbd"), "--object", creds, "--tls-creds", "tls0"]
    args += ["-r", "-f", "qcow2", "-t", "--fork", f"--pid-file={pidfile}"]
    for b in bitmaps:
        args += ["-B", b]
    if tcp:
        port = _free_port()
        where = f"127.0.0.1:{port}"
        args += ["-b", "127.0.0.1", "-p", str(port)]
    else:
        where = str(exports.tmp / f"tls{exports.n}.sock")
        args += ["-k", where]
    run(*args, str(image))
    exports.pids.append(int(pidfile.read_text()))
    return where


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "disk.qcow2"
    run(require_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(img), "32M")
    qemu_io(img, "write -P 0xaa 0 3M", "write -P 0xbb 20M 2M")
    return img


def _restore(container, bm, tmp_path) -> bytes:
    out = tmp_path / "out.raw"
    restore_volume(container, bm, str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def test_backup_over_tls_on_a_unix_socket_with_a_dirty_bitmap(tmp_path, image, exports, pki):
    container = Repository.open(tmp_path / "repo").container("p", "c")
    sock = _serve(exports, image, pki)
    uri = f"nbds+unix:///?socket={sock}&tls-certificates={pki['client']}"
    full, stats = backup_volume(uri, container, block_size=BS)
    assert stats.blocks_read == 5
    assert _restore(container, full, tmp_path) == raw_copy(image, tmp_path / "ref.raw")
    exports.stop_all()
    # A dirty bitmap's block status over TLS: the hinted incremental reads one block.
    run(require_tool("qemu-img"), "bitmap", "--add", str(image), f"cinderblock-{full.backup_id}")
    qemu_io(image, "write -P 0x11 9M 4k")
    sock = _serve(exports, image, pki, bitmaps=[f"cinderblock-{full.backup_id}"])
    uri = f"nbds+unix:///?socket={sock}&tls-certificates={pki['client']}"
    inc, stats = backup_volume(
        uri, container, parent=full, changes=parse_source("qemu-bitmap"), block_size=BS,
        audit_blocks=2,
    )  # fmt: skip
    assert stats.changed_extents_used is True
    assert stats.blocks_read == 1 and stats.bytes_read == MIB
    assert stats.changes_audit["mismatched"] == 0
    assert _restore(container, inc, tmp_path) == raw_copy(image, tmp_path / "ref.raw")


def test_tcp_tls_checks_the_host_name_and_offers_the_client_certificate(
    tmp_path, image, exports, pki
):
    where = _serve(exports, image, pki, tcp=True, verify_peer=True)
    container = Repository.open(tmp_path / "repo").container("p", "c")
    bm, stats = backup_volume(
        f"nbds://{where}/?tls-certificates={pki['client']}", container, block_size=BS
    )
    assert stats.blocks_read == 5
    assert _restore(container, bm, tmp_path) == raw_copy(image, tmp_path / "ref.raw")
    # The certificate is for 127.0.0.1 and localhost, not for another name.
    with pytest.raises(NbdError) as e:
        NbdClient(
            parse_nbd_uri(
                f"nbds://{where}/?tls-certificates={pki['client']}&tls-hostname=backup.example"
            )
        )
    assert "is not trusted (Hostname mismatch, certificate is not valid for 'backup.example'" in (
        str(e.value)
    )
    assert "issued for 'backup.example'" in str(e.value)
    # The server checks its clients: without a client certificate it hangs up.
    with pytest.raises(NbdError) as e:
        NbdClient(parse_nbd_uri(f"nbds://{where}/?tls-certificates={pki['anonymous']}"))
    assert str(e.value) == (
        f"the NBD export nbds://{where}/?tls-certificates={pki['anonymous']} closed the TLS "
        f"connection: if it checks its clients (verify-peer), {pki['anonymous']} must also "
        "hold client-cert.pem and client-key.pem, signed by a CA it trusts"
    )


def test_a_wrong_ca_and_mismatched_transports_fail_clearly(tmp_path, image, exports, pki):
    sock = _serve(exports, image, pki)
    wrong = f"nbds+unix:///?socket={sock}&tls-certificates={pki['wrong']}"
    with pytest.raises(NbdError) as e:
        NbdClient(parse_nbd_uri(wrong))
    assert str(e.value) == (
        f"the TLS certificate of the NBD export {parse_nbd_uri(wrong).uri} is not trusted "
        f"(unable to get local issuer certificate): {pki['wrong']}/ca-cert.pem must be the CA "
        "that signed the server's certificate"
    )
    container = Repository.open(tmp_path / "repo").container("p", "c")
    with pytest.raises(NbdError, match="is not trusted"):
        backup_volume(wrong, container, block_size=BS)
    # Plain NBD at a TLS server: it says TLS is required, and how to ask for it.
    with pytest.raises(NbdError) as e:
        NbdClient(parse_nbd_uri(f"nbd+unix:///?socket={sock}"))
    assert "TLS required" in str(e.value)
    assert "use nbds:// or nbds+unix:// with tls-certificates=DIR" in str(e.value)
    # TLS at a plain server.
    plain = exports.start(image)
    with pytest.raises(NbdError) as e:
        NbdClient(
            parse_nbd_uri(
                plain.replace("nbd+unix", "nbds+unix") + f"&tls-certificates={pki['client']}"
            )
        )
    assert "refused TLS (NBD_OPT_STARTTLS)" in str(e.value)
    assert "the server was started without TLS: use nbd:// or nbd+unix://" in str(e.value)
    # A missing directory, and URIs that cannot be TLS.
    with pytest.raises(
        NbdError, match=r"cannot load the TLS certificates .* must hold ca-cert.pem"
    ):
        NbdClient(parse_nbd_uri(f"nbds+unix:///?socket={sock}&tls-certificates={tmp_path}/none"))
    with pytest.raises(InvalidInput, match="needs tls-certificates=DIR"):
        parse_nbd_uri(f"nbds+unix:///?socket={sock}")
    with pytest.raises(InvalidInput, match="tls-certificates needs TLS: use nbds://"):
        parse_nbd_uri(f"nbd+unix:///?socket={sock}&tls-certificates=/x")


def test_the_embedded_default_registers_a_tls_volume_inside_its_directories(
    tmp_path, image, exports, pki
):
    from engine import BackupEngine

    sock = _serve(exports, image, pki)
    vol = "0c1d7a52-3f3e-4a55-9d64-1f9f3c2b8e10"
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        uri = f"nbds+unix:///?socket={sock}&tls-certificates={pki['client']}"
        assert eng.register_volume("p", vol, uri)["path"] == parse_nbd_uri(uri).uri
        b = eng.create_backup("p", {"backup": {"volume_id": vol}})
        done = eng.wait(b["backup"]["id"])
        assert done["status"] == "available", done
        assert done["stats"]["consistency"] == "export"
        out = tmp_path / "r.raw"
        eng.restore_backup("p", done["id"], str(out))
        assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")
    finally:
        eng.close()
