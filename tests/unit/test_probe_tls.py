"""The readiness probe's TLS accepts k3s certificates without an Authority Key Identifier.

Certificates issued by a CA without a Subject Key Identifier (CAs made by old k3s releases)
carry no AKI; Python 3.13's default context (X509_STRICT) refuses them, which made a Debian 13
machine's k3s look never ready. The chain is still verified against the cluster's CA file.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3snoded.process import ProbeTls
from tests.fake_k3s.test_tls_strict import _handshake


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_probe_accepts_a_chain_without_authority_key_identifiers(tmp_path: Path) -> None:
    ca_key, leaf_key, admin_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s-server-ca")])
    ca = _cert("k3s-server-ca", ca_key, ca_name, ca_key, ca=True)  # no SKI: leaves get no AKI
    _write(tmp_path / "server-ca", ca, ca_key)
    _write(tmp_path / "serving", _cert("k3s", leaf_key, ca_name, ca_key, ca=False), leaf_key)
    _write(
        tmp_path / "admin", _cert("system:admin", admin_key, ca_name, ca_key, ca=False), admin_key
    )

    probe = ProbeTls(tmp_path / "server-ca.crt", tmp_path / "admin.crt", tmp_path / "admin.key")
    client = probe.context()
    assert not client.verify_flags & ssl.VERIFY_X509_STRICT
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "serving.crt", tmp_path / "serving.key")
    _handshake(server, client, "localhost")

    # Still a verifying probe: another CA's chain is refused.
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone-else")])
    _write(
        tmp_path / "server-ca",
        _cert("someone-else", other_key, other_name, other_key, ca=True),
        other_key,
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(
            server,
            ProbeTls(
                tmp_path / "server-ca.crt", tmp_path / "admin.crt", tmp_path / "admin.key"
            ).context(),
            "localhost",
        )
