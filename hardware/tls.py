"""Mutual TLS between the console and node agents: a development CA and per-node certificates.

    python -m hardware.tls make-dev-ca --out DIR
    python -m hardware.tls issue-node --ca DIR --name HOST [--out DIR] [--san NAME_OR_IP ...]

Every certificate is good for both ends (server and client auth), so the console gets one with
`--name console`. Agents require a client certificate from their CA: a certificate from another
CA is refused during the handshake. Plaintext needs an explicit insecure flag on both sides.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class TlsIdentity:
    """PEM bytes: the CA to trust, and this end's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_dir(cls, directory: Path | str, name: str, ca_dir: Path | str | None = None) -> TlsIdentity:
        d = Path(directory)
        ca = Path(ca_dir) if ca_dir else d
        return cls(
            (ca / CA_CERT).read_bytes(),
            (d / f"{name}.pem").read_bytes(),
            (d / f"{name}-key.pem").read_bytes(),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_dev_ca(out: Path | str, *, name: str = "gpuconsole development CA", days: int = DEFAULT_DAYS) -> Path:
    """Create `ca.pem` and `ca-key.pem` in `out`; return the certificate's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(out / CA_KEY, key)
    (out / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / CA_CERT


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def issue_cert(
    ca_dir: Path | str,
    name: str,
    *,
    out: Path | str | None = None,
    sans: list[str] | None = None,
    days: int = DEFAULT_DAYS,
) -> Path:
    """Issue `<name>.pem` / `<name>-key.pem` signed by the CA in `ca_dir`, into `out` (default `ca_dir`).

    The certificate names `name`, `localhost` and 127.0.0.1 (loopback fleets) plus `sans`.
    """
    ca_dir = Path(ca_dir)
    out = Path(out) if out else ca_dir
    out.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san([name, "localhost", "127.0.0.1", *(sans or [])]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(out / f"{name}-key.pem", key)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / f"{name}.pem"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware.tls", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("make-dev-ca", help="create a development CA")
    ca.add_argument("--out", type=Path, required=True)
    ca.add_argument("--days", type=int, default=DEFAULT_DAYS)
    node = sub.add_parser("issue-node", help="issue a node (or console) certificate")
    node.add_argument("--ca", type=Path, required=True)
    node.add_argument("--name", required=True)
    node.add_argument("--out", type=Path, default=None)
    node.add_argument("--san", action="append", default=[])
    node.add_argument("--days", type=int, default=DEFAULT_DAYS)
    args = parser.parse_args(argv)
    if args.command == "make-dev-ca":
        print(make_dev_ca(args.out, days=args.days))
    else:
        print(issue_cert(args.ca, args.name, out=args.out, sans=args.san, days=args.days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
