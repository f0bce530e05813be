"""The cluster CAs and the listener's serving certificate (ECDSA P-256, like k3s)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_IP = "10.43.0.1"
KUBERNETES_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

# Bootstrap field name → file under <data-dir>/server (pkg/daemons/config ControlRuntimeBootstrap).
BOOTSTRAP_FILES: dict[str, str] = {
    "ServerCA": "tls/server-ca.crt",
    "ServerCAKey": "tls/server-ca.key",
    "ClientCA": "tls/client-ca.crt",
    "ClientCAKey": "tls/client-ca.key",
    "RequestHeaderCA": "tls/request-header-ca.crt",
    "RequestHeaderCAKey": "tls/request-header-ca.key",
    "ServiceKey": "tls/service.key",
    "PasswdFile": "cred/passwd",
}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _new_ca(cn: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_cas(server_dir: Path) -> None:
    """Create the cluster CAs and service key under ``server_dir/tls`` unless present."""
    stamp = int(dt.datetime.now(dt.UTC).timestamp())
    for stem, cn in (
        ("server-ca", f"k3s-server-ca@{stamp}"),
        ("client-ca", f"k3s-client-ca@{stamp}"),
        ("request-header-ca", f"k3s-request-header-ca@{stamp}"),
    ):
        crt, key = server_dir / "tls" / f"{stem}.crt", server_dir / "tls" / f"{stem}.key"
        if crt.exists() and key.exists():
            continue
        cert_pem, key_pem = _new_ca(cn)
        _write(crt, cert_pem, 0o644)
        _write(key, key_pem)
    service = server_dir / "tls" / "service.key"
    if not service.exists():
        _write(service, _pem_key(ec.generate_private_key(ec.SECP256R1())))


def _load_ca(server_dir: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((server_dir / "tls" / f"{stem}.crt").read_bytes())
    pem = (server_dir / "tls" / f"{stem}.key").read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{stem} key is not an EC key")
    return cert, key


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The issuing CA's key identifier, which Go's ``x509.CreateCertificate`` copies into every
    certificate a CA signs (real k3s's certificates carry it; strict verifiers require it)."""
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_client(server_dir: Path, cn: str, org: str) -> tuple[bytes, bytes]:
    """A client certificate (PEM cert, PEM key) signed by the cluster's client CA."""
    ca_cert, ca_key = _load_ca(server_dir, "client-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def ensure_client_admin(server_dir: Path) -> None:
    """``server/tls/client-admin.{crt,key}``: CN system:admin, O system:masters (deps.go)."""
    crt, key = server_dir / "tls" / "client-admin.crt", server_dir / "tls" / "client-admin.key"
    if crt.exists() and key.exists():
        ca = x509.load_pem_x509_certificate((server_dir / "tls" / "client-ca.crt").read_bytes())
        if x509.load_pem_x509_certificate(crt.read_bytes()).issuer == ca.subject:
            return
    cert_pem, key_pem = issue_client(server_dir, "system:admin", "system:masters")
    _write(crt, cert_pem, 0o644)
    _write(key, key_pem)


def write_file(path: Path, data: bytes) -> None:
    _write(path, data, 0o644 if path.suffix == ".crt" else 0o600)


def ca_hash(pem: bytes) -> str:
    """The token CA hash: SHA-256 of the PEM bytes served at /cacerts."""
    return hashlib.sha256(pem).hexdigest()


@dataclass(frozen=True)
class Serving:
    cert: Path
    key: Path
    sans: tuple[str, ...]


def issue_serving(server_dir: Path, sans: list[str], cn: str = "k3s") -> Serving:
    """A fresh serving certificate for the listener, signed by the server CA."""
    ca_cert, ca_key = _load_ca(server_dir, "server-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    seen: list[str] = []
    for san in sans:
        if not san or san in seen:
            continue
        seen.append(san)
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "k3s"),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    crt_path = server_dir / "tls" / "serving-kube-apiserver.crt"
    key_path = server_dir / "tls" / "serving-kube-apiserver.key"
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(key_path, _pem_key(key))
    return Serving(crt_path, key_path, tuple(seen))
