"""Verifying investigators' bearer tokens (JWTs from agency identity providers).

Strict by construction: the issuer must be on the allow-list, the algorithm
pinned for that issuer and matching the key's type (so ``alg: none`` and
HS256-with-a-public-key confusion cannot pass), the key chosen by ``kid``,
and ``exp``, ``iat``, ``aud``, ``iss`` and ``sub`` all required. An issuer may
only vouch for the agencies it is configured for.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from liaison.config import Issuer
from liaison.errors import AuthenticationError, ConfigError
from liaison.keys import key_id_of
from liaison.messages import Requester

LEEWAY_S = 30
MAX_TOKEN_LIFETIME_S = 12 * 3600
MAX_TOKEN_BYTES = 8192
MIN_RSA_BITS = 2048


def _algorithm_for(key: PublicKeyTypes) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return "RS256"
    raise ConfigError(
        f"identity provider key {type(key).__name__} is not usable; use Ed25519, "
        f"EC P-256 or RSA of at least {MIN_RSA_BITS} bits"
    )


@dataclass(frozen=True, slots=True)
class _IssuerKey:
    key: PublicKeyTypes
    algorithm: str


@dataclass(frozen=True, slots=True)
class _TrustedIssuer:
    issuer: str
    agencies: frozenset[str]
    algorithms: frozenset[str]
    keys: dict[str, _IssuerKey]


def _load_public_key(path: Path) -> PublicKeyTypes:
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"identity provider key {path} does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key ({exc})") from exc


class TokenVerifier:
    """Verifies tokens; a verified token is remembered until it expires.

    Investigators send the same token with every query of a session, and a
    full verification costs more than the rest of the gateway's work on a
    query. Only successes are cached, keyed by the token's SHA-256, and never
    past the token's own ``exp``.
    """

    CACHE_SIZE = 4096

    def __init__(self, issuers: tuple[Issuer, ...], audience: str) -> None:
        self.audience = audience
        self._cache: OrderedDict[bytes, tuple[Requester, float]] = OrderedDict()
        self._issuers: dict[str, _TrustedIssuer] = {}
        for issuer in issuers:
            keys: dict[str, _IssuerKey] = {}
            for path in issuer.public_keys:
                key = _load_public_key(path)
                keys[key_id_of(key)] = _IssuerKey(key, _algorithm_for(key))
            self._issuers[issuer.issuer] = _TrustedIssuer(
                issuer.issuer, issuer.agencies, frozenset(issuer.algorithms), keys
            )

    def verify(self, token: str | None) -> Requester:
        """Return the authenticated requester, or raise AuthenticationError."""
        if token and len(token) <= MAX_TOKEN_BYTES:
            key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            cached = self._cache.get(key)
            if cached is not None:
                if time.time() < cached[1]:
                    self._cache.move_to_end(key)
                    return cached[0]
                del self._cache[key]
            requester, expires = self._verify(token)
            self._cache[key] = (requester, expires)
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
            return requester
        return self._verify(token)[0]

    def _verify(self, token: str | None) -> tuple[Requester, float]:
        if not token:
            raise AuthenticationError(
                "no bearer token; send `authorization: Bearer <JWT>` from your agency's "
                "identity provider"
            )
        if len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
            raise AuthenticationError(f"token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token is not a well-formed JWT ({exc})") from exc
        alg = header.get("alg")
        issuer_name = unverified.get("iss")
        issuer = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if issuer is None:
            raise AuthenticationError(
                f"token issuer {issuer_name!r} is not trusted by this gateway; trusted: "
                f"{', '.join(sorted(self._issuers))}"
            )
        if alg not in issuer.algorithms:
            raise AuthenticationError(
                f"token algorithm {alg!r} is not accepted for issuer {issuer.issuer!r}; "
                f"accepted: {', '.join(sorted(issuer.algorithms))}"
            )
        kid = header.get("kid")
        if isinstance(kid, str) and kid in issuer.keys:
            chosen = issuer.keys[kid]
        elif kid is None and len(issuer.keys) == 1:
            chosen = next(iter(issuer.keys.values()))
        else:
            raise AuthenticationError(
                f"token key id {kid!r} is not a key of issuer {issuer.issuer!r}"
            )
        if chosen.algorithm != alg:
            raise AuthenticationError(f"token says {alg!r} but its key is for {chosen.algorithm!r}")
        try:
            claims = jwt.decode(
                token,
                chosen.key,  # type: ignore[arg-type]  # pyjwt's AllowedPublicKeys is narrower than PublicKeyTypes; _algorithm_for checked the type
                algorithms=[alg],
                audience=self.audience,
                issuer=issuer.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token has expired; get a new one") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationError(
                f"token is for another audience; this gateway accepts {self.audience!r}"
            ) from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token rejected: {exc}") from exc
        return self._requester(claims, issuer)

    def _requester(
        self, claims: dict[str, object], issuer: _TrustedIssuer
    ) -> tuple[Requester, float]:
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise AuthenticationError("token `exp` and `iat` must be numbers")
        if exp - iat > MAX_TOKEN_LIFETIME_S:
            raise AuthenticationError(
                f"token is valid for {int(exp - iat)} s; at most {MAX_TOKEN_LIFETIME_S} s "
                "is accepted"
            )
        subject, agency, roles = claims.get("sub"), claims.get("agency"), claims.get("roles")
        if not isinstance(subject, str) or not subject.strip():
            raise AuthenticationError("token `sub` must name the investigator")
        if not isinstance(agency, str) or not agency:
            raise AuthenticationError("token has no `agency` claim")
        if agency not in issuer.agencies:
            raise AuthenticationError(
                f"issuer {issuer.issuer!r} may not vouch for agency {agency!r}"
            )
        if (
            not isinstance(roles, list)
            or not roles
            or not all(isinstance(r, str) and r for r in roles)
        ):
            raise AuthenticationError("token `roles` claim must be a non-empty list of strings")
        attributes = _attributes(claims.get("attributes", {}))
        return Requester(agency, subject, tuple(roles), issuer.issuer, attributes), float(exp)


MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 64


def _attributes(raw: object) -> dict[str, str]:
    """The optional `attributes` claim: a small object of short strings."""
    if not isinstance(raw, dict):
        raise AuthenticationError("token `attributes` claim must be an object of strings")
    if len(raw) > MAX_ATTRIBUTES:
        raise AuthenticationError(f"token carries more than {MAX_ATTRIBUTES} attributes")
    out = {}
    for key, value in raw.items():
        if (
            not isinstance(value, str)
            or not 0 < len(key) <= MAX_ATTRIBUTE_CHARS
            or not 0 < len(value) <= MAX_ATTRIBUTE_CHARS
            or not (key.isprintable() and value.isprintable())
        ):
            raise AuthenticationError(
                f"token attribute {key[:MAX_ATTRIBUTE_CHARS]!r} must be printable text of 1 to "
                f"{MAX_ATTRIBUTE_CHARS} characters"
            )
        out[key] = value
    return out
