"""The stand-in's certificates pass the checks a strict verifier makes, as real k3s's do.

Go's ``x509.CreateCertificate`` gives every certificate signed by a CA that CA's key
identifier (AuthorityKeyIdentifier), and OpenSSL with ``X509_V_FLAG_X509_STRICT`` (on by
default for Python 3.13's ``ssl.create_default_context``) refuses a chain without it. Debian
13's k3snoded (Python 3.13) probing the stand-in's ``/readyz`` failed exactly so.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tests.fakes.k3s_stub import tls


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A whole TLS handshake through memory BIOs (no socket): raises on a refused chain."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", cli), ("server", srv)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_serving_and_admin_certificates_verify_strictly(tmp_path: Path) -> None:
    server_dir = tmp_path / "server"
    tls.ensure_cas(server_dir)
    tls.ensure_client_admin(server_dir)
    serving = tls.issue_serving(server_dir, ["127.0.0.1", "localhost"])
    d = server_dir / "tls"

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(serving.cert, serving.key)
    server.load_verify_locations(d / "client-ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    server.verify_flags |= ssl.VERIFY_X509_STRICT

    client = ssl.create_default_context(cafile=str(d / "server-ca.crt"))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client.load_cert_chain(d / "client-admin.crt", d / "client-admin.key")
    _handshake(server, client, "localhost")
