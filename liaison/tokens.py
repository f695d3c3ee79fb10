"""A development identity provider, for demos and tests only.

Real deployments take investigators' tokens from their agencies' identity
providers; this module exists so that a federation can be tried without one.
Its name says so on purpose: never point a production gateway at its keys.
"""

from __future__ import annotations

import time

import jwt

from liaison.keys import SigningKey

DEV_ISSUER_PREFIX = "https://dev-idp.invalid/"


def dev_issuer(agency: str) -> str:
    """The issuer URL of the development identity provider for ``agency``."""
    return f"{DEV_ISSUER_PREFIX}{agency}"


def issue_dev_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    agency: str,
    subject: str,
    roles: tuple[str, ...],
    ttl_s: int = 3600,
    now: int | None = None,
    attributes: dict[str, str] | None = None,
) -> str:
    """Sign an EdDSA JWT with the claims the gateway requires."""
    issued = int(time.time()) if now is None else now
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl_s,
        "agency": agency,
        "roles": list(roles),
    }
    if attributes:
        claims["attributes"] = dict(attributes)
    return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.key_id})
