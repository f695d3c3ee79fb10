"""Mutual TLS between gateway and nodes, on top of the signed envelopes.

Signatures say who asked and who answered; TLS keeps the exchange private on
the wire, lets each side refuse connections from strangers before any bytes
are parsed, and tells a node *who is on the line*: a node answers only the
gateway identities its config names (see ``CertificateIdentity``), so a
co-member agency that holds a certificate from the same CA cannot replay a
captured request to it. ``write_dev_pki`` makes a throwaway CA for demos and
tests, with certificates that carry only the key usage of their role; real
deployments use their agencies' own PKI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
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


class CertRole(StrEnum):
    """What a certificate may be used for (its extended key usage)."""

    SERVER = "server"  # serverAuth: nodes, which only ever accept connections
    CLIENT = "client"  # clientAuth: the gateway, which only ever connects to nodes


_EKU = {
    CertRole.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
    CertRole.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
}
DEV_SAN_SUFFIX = ".liaison.invalid"


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """Who a certificate names: its public key's fingerprint and its DNS/URI names."""

    # SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex (a key pin that
    # survives re-issuing the certificate for the same key).
    spki_sha256: str
    # DNS names and URIs from the subjectAltName extension.
    names: frozenset[str]
    subject: str

    @classmethod
    def from_pem(cls, pem: bytes) -> CertificateIdentity:
        """The identity of the first certificate in ``pem``; raise ConfigError if none parses."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise ConfigError(f"not a PEM certificate ({exc})") from exc
        return cls.of(cert)

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateIdentity:
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names: frozenset[str] = frozenset()
        else:
            names = frozenset(
                [
                    *san.get_values_for_type(x509.DNSName),
                    *san.get_values_for_type(x509.UniformResourceIdentifier),
                ]
            )
        return cls(hashlib.sha256(spki).hexdigest(), names, cert.subject.rfc4514_string())


def certificate_identity(path: Path) -> CertificateIdentity:
    """The identity of the certificate in the PEM file at ``path``."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"certificate file {path} does not exist") from exc
    try:
        return CertificateIdentity.from_pem(pem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def write_dev_pki(
    folder: Path, certificates: Mapping[str, Iterable[CertRole]], days: int = 365
) -> None:
    """Write a development CA (ca.pem) and a certificate and key per name.

    ``certificates`` maps each name to the roles its certificate may play:
    nodes get ``SERVER`` only and the gateway ``CLIENT`` only, so a node's
    certificate cannot open a connection to another node (TLS refuses a
    certificate used outside its extended key usage). Each certificate is
    valid for localhost and 127.0.0.1 and also names ``<name>.liaison.invalid``.
    Demo use only: the CA's key is thrown away once the certificates are signed.
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
    for name, roles in certificates.items():
        usages = [_EKU[r] for r in CertRole if r in set(roles)]
        if not usages:
            raise ConfigError(f"certificate {name!r} needs a role (server or client)")
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
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName(f"{name}{DEV_SAN_SUFFIX}"),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{name}.key", key)
