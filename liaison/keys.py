"""Ed25519 keys for signing envelopes and tokens, stored as PEM files.

Key ids are the hex SHA-256 of the DER SubjectPublicKeyInfo of a public key
(of any type: Ed25519 for envelopes, also EC and RSA for identity providers),
so anyone holding the public key can recompute the id and no registry is
needed to agree on it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from liaison.errors import BadSignature, ConfigError

KeyId = NewType("KeyId", str)
SIGNATURE_BYTES = 64


def _sodium() -> tuple[Callable[[bytes, bytes], bytes], type[Exception]] | None:
    """libsodium's Ed25519 check (PyNaCl), about twice as fast as OpenSSL's; None without it."""
    try:
        from nacl.bindings import crypto_sign_open
        from nacl.exceptions import BadSignatureError
    except ImportError:
        return None
    return crypto_sign_open, BadSignatureError


_SODIUM = _sodium()


def key_id_of(public_key: PublicKeyTypes) -> KeyId:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyId(hashlib.sha256(der).hexdigest())


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key trusted to sign something, with its derived id."""

    key_id: KeyId
    public_key: Ed25519PublicKey
    # The key's 32 bytes, as libsodium takes it; derived, so not compared.
    raw: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", self.public_key.public_bytes_raw())

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey) -> VerifyingKey:
        return cls(key_id=key_id_of(public_key), public_key=public_key)

    @classmethod
    def from_pem_file(cls, path: Path) -> VerifyingKey:
        try:
            loaded = serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(f"public key file {path} does not exist; check the path") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read public key file {path} ({exc.strerror})") from exc
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM public key ({exc})") from exc
        if not isinstance(loaded, Ed25519PublicKey):
            raise ConfigError(
                f"{path} holds a {type(loaded).__name__}, expected an Ed25519 public key"
            )
        return cls.from_public_key(loaded)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise BadSignature unless ``signature`` is valid for ``message``.

        The same Ed25519 check (RFC 8032) whichever library makes it:
        libsodium when PyNaCl is installed, OpenSSL otherwise. libsodium is
        the stricter of the two (it also refuses small-order keys and
        points), so a signature it accepts, OpenSSL accepts too.
        """
        if _SODIUM is not None:
            sodium_open, refused = _SODIUM
            if len(signature) != SIGNATURE_BYTES:
                raise self._refused()
            try:
                sodium_open(signature + message, self.raw)
            except refused as exc:
                raise self._refused() from exc
            return
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature as exc:
            raise self._refused() from exc

    def _refused(self) -> BadSignature:
        return BadSignature(f"signature does not verify under key {self.key_id[:16]}…")

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private signing key; ``verifying_key`` is what others pin."""

    private_key: Ed25519PrivateKey
    verifying_key: VerifyingKey

    @property
    def key_id(self) -> KeyId:
        return self.verifying_key.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(private, VerifyingKey.from_public_key(private.public_key()))

    @classmethod
    def from_pem_file(cls, path: Path) -> SigningKey:
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"signing key file {path} does not exist; create keys with `liaison init`"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read signing key file {path} ({exc.strerror})") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigError(
                f"{path} holds a {type(loaded).__name__}, expected an Ed25519 private key"
            )
        return cls(loaded, VerifyingKey.from_public_key(loaded.public_key()))

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, private_path: Path, public_path: Path) -> None:
        """Write the key pair; the private file is created owner-only (0600)."""
        private_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # O_CREAT's mode applies only to a new file; an old one keeps its mode.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_pem())
        public_path.write_bytes(self.verifying_key.to_pem())
