"""Verifying investigators' bearer tokens (JWTs from agency identity providers).

Strict by construction: the issuer must be on the allow-list, the algorithm
pinned for that issuer and one its key's type allows (so ``alg: none`` and
HS256-with-a-public-key confusion cannot pass), the key chosen by ``kid``,
and ``exp``, ``iat``, ``aud``, ``iss`` and ``sub`` all required. An issuer may
only vouch for the agencies it is configured for. Keys come from PEM files,
JWKS files and JWKS URLs (liaison/identity/jwks.py); claims are read where the issuer's
``[issuer.claims]`` says (liaison/identity/claims.py).

Every refusal is logged once, as a structured event (on ``liaison.gateway`` unless
the owner names its own logger)
with the issuer, kid, alg, subject and a reason code, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import jwt

from liaison.config import ClaimMapping, Issuer
from liaison.errors import AuthenticationError
from liaison.identity.claims import MAX_ATTRIBUTE_CHARS, MAX_ATTRIBUTES, Refused, requester_from
from liaison.identity.jwks import JWKS_TIMEOUT_S, MAX_JWKS_BYTES, IssuerKey, IssuerKeys
from liaison.messages import Requester

__all__ = [
    "LEEWAY_S",
    "MAX_ATTRIBUTES",  # re-exported: `liaison token issue` checks attributes against them
    "MAX_ATTRIBUTE_CHARS",
    "MAX_TOKEN_BYTES",
    "MAX_TOKEN_LIFETIME_S",
    "TokenVerifier",
]

log = logging.getLogger("liaison.gateway")

LEEWAY_S = 30
MAX_TOKEN_LIFETIME_S = 12 * 3600
MAX_TOKEN_BYTES = 8192
# Header and claim values from a refused token are attacker-chosen: keep log lines short.
MAX_LOGGED_CHARS = 128


@dataclass(frozen=True, slots=True)
class _TrustedIssuer:
    issuer: str
    agencies: frozenset[str]
    algorithms: frozenset[str]
    keys: IssuerKeys
    claims: ClaimMapping
    authorized_parties: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Verified:
    requester: Requester
    expires: float
    issuer: str
    kid: str
    key: IssuerKey


@dataclass(slots=True)
class _Seen:
    """What a refusal may log: the token's iss, kid, alg and sub as it claimed them."""

    issuer: object = None
    kid: object = None
    alg: object = None
    sub: object = None


# Not in liaison/errors.py on purpose: internal control flow that never leaves
# TokenVerifier; it refreshes the issuer's keys and verifies again.
class _KeysNeeded(Exception):
    """The issuer's keys should be refreshed (``claimed``) or are being refreshed."""

    def __init__(self, issuer: _TrustedIssuer, *, claimed: bool) -> None:
        super().__init__(issuer.issuer)
        self.issuer = issuer
        self.claimed = claimed


def _loggable(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value[:MAX_LOGGED_CHARS]
    return f"<{type(value).__name__}>"


def bearer_token(metadata: Iterable[tuple[str, object]] | None) -> str | None:
    """The token of an "authorization: Bearer <JWT>" call metadata entry; None if there is none."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip() or None
    return None


class TokenVerifier:
    """Verifies tokens; a verified token is remembered until it expires.

    Investigators send the same token with every query of a session, and a
    full verification costs more than the rest of the gateway's work on a
    query. Only successes are cached, keyed by the token's SHA-256, never past
    the token's own ``exp``, and only while its key is still the issuer's.

    Building one reads every key file and fetches every JWKS URL once (it
    blocks); an issuer left with no usable key is a ConfigError. Afterwards
    ``verify_async`` refetches on a worker thread, never on the event loop;
    ``verify`` does the same work inline, for callers without a loop.
    """

    CACHE_SIZE = 4096

    def __init__(
        self,
        issuers: tuple[Issuer, ...],
        audience: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        jwks_timeout_s: float = JWKS_TIMEOUT_S,
        max_jwks_bytes: int = MAX_JWKS_BYTES,
        logger: logging.Logger = log,
        party: str = "this gateway",
    ) -> None:
        self.audience = audience
        self._log = logger
        # Who refuses, in refusals' words ("this gateway", "this node's inbox").
        self._party = party
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._issuers: dict[str, _TrustedIssuer] = {}
        for issuer in issuers:
            keys = IssuerKeys(
                issuer, clock=clock, timeout_s=jwks_timeout_s, max_bytes=max_jwks_bytes
            )
            self._issuers[issuer.issuer] = _TrustedIssuer(
                issuer.issuer,
                issuer.agencies,
                frozenset(issuer.algorithms),
                keys,
                issuer.claims,
                issuer.authorized_parties,
            )

    def issuer_keys(self) -> list[IssuerKeys]:
        """Each trusted issuer's keys as loaded, for ``gateway check`` to report."""
        return [trusted.keys for trusted in self._issuers.values()]

    def verify(self, token: str | None) -> Requester:
        """Return the authenticated requester, or raise AuthenticationError.

        A due key refresh happens here, on the calling thread: from asyncio
        code use ``verify_async``.
        """
        try:
            return self._checked(token, may_refresh=True)
        except _KeysNeeded as need:
            if need.claimed:
                need.issuer.keys.refresh()
            return self._checked(token, may_refresh=False)

    async def verify_async(self, token: str | None) -> Requester:
        """``verify`` for the event loop: a key refresh runs on a worker thread.

        Concurrent tokens that need the same issuer's refresh wait for one
        fetch; no request starts a second one within the issuer's minimum
        refresh interval.
        """
        try:
            return self._checked(token, may_refresh=True)
        except _KeysNeeded as need:
            await self._refreshed(need)
            return self._checked(token, may_refresh=False)

    async def _refreshed(self, need: _KeysNeeded) -> None:
        name = need.issuer.issuer
        task = self._inflight.get(name)
        if need.claimed:
            task = asyncio.ensure_future(asyncio.to_thread(need.issuer.keys.refresh))
            self._inflight[name] = task

            def done(finished: asyncio.Task[None]) -> None:
                if self._inflight.get(name) is finished:
                    del self._inflight[name]
                if not finished.cancelled() and finished.exception() is not None:
                    self._log.error(
                        "issuer key refresh crashed",
                        extra={"issuer": name},
                        exc_info=finished.exception(),
                    )

            task.add_done_callback(done)
        if task is not None:
            # Shielded: a caller giving up (deadline) must not cancel the
            # fetch the others are waiting for.
            with contextlib.suppress(Exception):  # done() logged it; verify with the keys we have
                await asyncio.shield(task)

    def _checked(self, token: str | None, *, may_refresh: bool) -> Requester:
        seen = _Seen()
        try:
            return self._cached_or_verified(token, seen, may_refresh=may_refresh)
        except Refused as refused:
            self._log.warning(
                "token refused",
                extra={
                    "issuer": _loggable(seen.issuer),
                    "kid": _loggable(seen.kid),
                    "alg": _loggable(seen.alg),
                    "sub": _loggable(seen.sub),
                    "reason": refused.reason,
                    "detail": refused.detail,
                },
            )
            raise AuthenticationError(refused.message) from None

    def _cached_or_verified(
        self, token: str | None, seen: _Seen, *, may_refresh: bool
    ) -> Requester:
        if not token:
            raise Refused(
                "no_token",
                "no bearer token; send `authorization: Bearer <JWT>` from your agency's "
                "identity provider",
            )
        encoded = token.encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_TOKEN_BYTES:
            raise Refused("oversized", f"token is longer than {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(encoded).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            trusted = self._issuers[hit.issuer]
            key = trusted.keys.current.keys.get(hit.kid)
            # Still the key it verified under (a refresh that dropped or
            # replaced it ends the entry); the same object needs no comparing.
            if time.time() < hit.expires and (key is hit.key or key == hit.key):
                if may_refresh and trusted.keys.claim_refresh(kid_known=True):
                    raise _KeysNeeded(trusted, claimed=True)
                self._cache.move_to_end(digest)
                return hit.requester
            self._cache.pop(digest, None)
        verified = self._verify(token, seen, may_refresh=may_refresh)
        self._cache[digest] = verified
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return verified.requester

    def _verify(self, token: str, seen: _Seen, *, may_refresh: bool) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Refused("malformed", f"token is not a well-formed JWT ({exc})") from exc
        alg, kid, issuer_name = header.get("alg"), header.get("kid"), unverified.get("iss")
        seen.alg, seen.kid, seen.issuer, seen.sub = alg, kid, issuer_name, unverified.get("sub")
        issuer = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if issuer is None:
            raise Refused(
                "untrusted_issuer",
                f"token issuer {issuer_name!r} is not trusted by {self._party}; trusted: "
                f"{', '.join(sorted(self._issuers))}",
            )
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise Refused(
                "alg_not_allowed",
                f"token algorithm {alg!r} is not accepted for issuer {issuer.issuer!r}; "
                f"accepted: {', '.join(sorted(issuer.algorithms))}",
            )
        kid_name, chosen = self._key(issuer, kid, may_refresh=may_refresh)
        if alg not in chosen.algorithms:
            raise Refused(
                "alg_key_mismatch",
                f"token says {alg!r} but its key is for "
                f"{' or '.join(repr(a) for a in sorted(chosen.algorithms))}",
            )
        try:
            claims = jwt.decode(
                token,
                chosen.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=issuer.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Refused("expired", "token has expired; get a new one") from exc
        except jwt.InvalidAudienceError as exc:
            raise Refused(
                "wrong_audience",
                f"token is for another audience; {self._party} accepts {self.audience!r}",
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise Refused("bad_signature", f"token rejected: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise Refused("invalid", f"token rejected: {exc}") from exc
        exp = self._lifetime_checked(claims)
        requester = requester_from(
            claims,
            issuer=issuer.issuer,
            agencies=issuer.agencies,
            mapping=issuer.claims,
            authorized_parties=issuer.authorized_parties,
        )
        return _Verified(requester, exp, issuer.issuer, kid_name, chosen)

    def _key(
        self, issuer: _TrustedIssuer, kid: object, *, may_refresh: bool
    ) -> tuple[str, IssuerKey]:
        """The key ``kid`` names, refreshing the issuer's keys first when that is due."""
        keyset = issuer.keys.current
        known = not isinstance(kid, str) or kid in keyset.keys or kid in keyset.unusable
        if may_refresh and issuer.keys.claim_refresh(kid_known=known):
            raise _KeysNeeded(issuer, claimed=True)
        if isinstance(kid, str) and kid in keyset.keys:
            return kid, keyset.keys[kid]
        if kid is None and len(keyset.keys) == 1:
            return next(iter(keyset.keys.items()))
        if isinstance(kid, str) and kid in keyset.unusable:
            raise Refused(
                "unusable_key",
                f"token key id {kid!r} names a key of issuer {issuer.issuer!r} that "
                f"{self._party} cannot use: {keyset.unusable[kid]}",
            )
        if may_refresh and not known and issuer.issuer in self._inflight:
            raise _KeysNeeded(issuer, claimed=False)
        raise Refused(
            "unknown_kid", f"token key id {kid!r} is not a key of issuer {issuer.issuer!r}"
        )

    @staticmethod
    def _lifetime_checked(claims: dict[str, object]) -> float:
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise Refused("bad_time_claims", "token `exp` and `iat` must be numbers")
        if exp - iat > MAX_TOKEN_LIFETIME_S:
            raise Refused(
                "lifetime_too_long",
                f"token is valid for {int(exp - iat)} s; at most {MAX_TOKEN_LIFETIME_S} s "
                "is accepted",
            )
        return float(exp)
