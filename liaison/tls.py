"""Mutual TLS between gateway and nodes, on top of the signed envelopes.

Signatures say who asked and who answered; TLS keeps the exchange private on
the wire and lets each side refuse connections from strangers before any
bytes are parsed. ``write_dev_pki`` makes a throwaway CA for demos and tests;
real deployments use their agencies' own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from liaison.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: our certificate chain and key, and the CA we trust for the peer.

    On a server, ``ca`` set means client certificates are required and checked
    against it (mutual TLS); on a client, ``ca`` verifies the server.
    """

    certificate: Path
    private_key: Path
    ca: Path | None

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        out: list[bytes | None] = []
        for what, path in (
            ("certificate", self.certificate),
            ("private key", self.private_key),
            ("CA", self.ca),
        ):
            if path is None:
                out.append(None)
                continue
            try:
                out.append(path.read_bytes())
            except FileNotFoundError as exc:
                raise ConfigError(f"TLS {what} file {path} does not exist") from exc
        cert, key = out[0], out[1]
        assert cert is not None and key is not None  # noqa: PT018 - both paths are required
        return cert, key, out[2]

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials; with ``ca``, clients must present a certificate it signed."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials that present our certificate and verify the server against ``ca``."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def write_dev_pki(folder: Path, names: list[str], days: int = 365) -> None:
    """Write a development CA (ca.pem) and a certificate and key per name.

    Certificates are valid for localhost and 127.0.0.1, for both server and
    client use, so one pair serves a process in either role. Demo use only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Liaison development CA (not for production)")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{name}.key", key)
