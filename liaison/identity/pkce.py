"""Base64url and PKCE (RFC 7636), for the console's sign-in and the development provider."""

from __future__ import annotations

import base64
import hashlib


def b64url(data: bytes) -> str:
    """Base64url without padding, as JOSE and OAuth write binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier`` (RFC 7636 section 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())
