"""Identity providers' signing keys: PEM files, a JWKS file, a JWKS URL.

A JSON Web Key Set (RFC 7517) is how Keycloak, Entra ID, Okta and Auth0
publish the keys their tokens are signed with, each named by the provider's
own ``kid``. Reading one is strict: only public signature keys (``use`` sig,
``key_ops`` verify) of the types our algorithms need (Ed25519, P-256, RSA of
2048 bits or more), a key's own ``alg`` must agree with its type and with the
issuer's pinned algorithms, and no symmetric or private key material is ever
taken. A key that fails is skipped with its reason, so a provider's
encryption key next to its signing key does not stop the gateway, and a token
naming a skipped key is told why.

A JWKS URL is fetched over HTTPS (plain http only on loopback) with a
timeout and a size cap, on a schedule and when a token names an unknown
``kid``, but at most once per ``jwks_min_refresh_s``: a stream of made-up
kids cannot turn the gateway into a fetch loop against the provider. A
failed fetch keeps the last good keys.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from liaison.config import LOOPBACK_HOSTS, Issuer, jwks_url_problem
from liaison.errors import ConfigError
from liaison.keys import key_id_of

log = logging.getLogger("liaison.gateway")

MIN_RSA_BITS = 2048
JWKS_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 64
MAX_KID_CHARS = 256
# Members that only a private or symmetric key has: a JWKS is public, and a
# key carrying them is a publishing mistake we must not build on.
_SECRET_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

VerifyKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# Not in liaison/errors.py on purpose: internal control flow that never leaves the
# gateway; IssuerKeys logs it (keeping the last good keys) or raises ConfigError.
class JwksError(ValueError):
    """A JWKS document or fetch is unusable as a whole; the message says why."""


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """One usable key, and the algorithms a token signed with it may name."""

    key: VerifyKey
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Mapping[str, IssuerKey] = field(default_factory=dict)
    # kid -> why it cannot be used; kid-less keys appear as "#<index>".
    unusable: Mapping[str, str] = field(default_factory=dict)


def algorithms_of(key: PublicKeyTypes) -> frozenset[str]:
    """The algorithms a key's type allows; ValueError for a type we never accept."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"})
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return frozenset({"ES256"})
        raise ValueError(f"EC curve {key.curve.name} is not accepted; use P-256")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return frozenset({"RS256", "PS256"})
        raise ValueError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    raise ValueError(f"{type(key).__name__} keys are not accepted")


def _usable(algorithms: frozenset[str], pinned: frozenset[str]) -> frozenset[str]:
    """The algorithms of a key the issuer's pins allow, or why none are."""
    allowed = algorithms & pinned
    if not allowed:
        raise ValueError(
            f"a key for {', '.join(sorted(algorithms))} fits none of the issuer's algorithms "
            f"({', '.join(sorted(pinned))})"
        )
    return allowed


def load_pem_keys(issuer: Issuer) -> dict[str, IssuerKey]:
    """``public_keys`` (PEM files), named by Liaison's own key id as before."""
    keys: dict[str, IssuerKey] = {}
    for path in issuer.public_keys:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(f"identity provider key {path} does not exist") from exc
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM public key ({exc})") from exc
        try:
            if not isinstance(key, VerifyKey):
                raise ValueError(type(key).__name__)
            kinds = algorithms_of(key)
        except ValueError as exc:
            raise ConfigError(
                f"identity provider key {type(key).__name__} is not usable; use Ed25519, "
                f"EC P-256 or RSA of at least {MIN_RSA_BITS} bits"
            ) from exc
        try:
            algorithms = _usable(kinds, frozenset(issuer.algorithms))
        except ValueError as exc:
            raise ConfigError(
                f"identity provider key {path}: {exc}; list its algorithm in `algorithms`"
            ) from exc
        keys[key_id_of(key)] = IssuerKey(key, algorithms)
    return keys


def parse_jwks(raw: bytes, pinned: frozenset[str]) -> KeySet:
    """The usable keys of a JWKS document; JwksError if the document itself is wrong."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JwksError(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('not a JWK Set: expected an object with a "keys" list')
    entries = doc["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise JwksError(f"{len(entries)} keys; at most {MAX_JWKS_KEYS} are read")
    keys: dict[str, IssuerKey] = {}
    unusable: dict[str, str] = {}
    seen: set[str] = set()
    for index, jwk in enumerate(entries):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS:
            unusable[f"#{index}"] = f"has no `kid` (a string of 1 to {MAX_KID_CHARS} characters)"
            continue
        if kid in seen:
            # Two keys under one kid: which one a token means is anyone's guess.
            raise JwksError(f"kid {kid!r} names more than one key")
        seen.add(kid)
        try:
            keys[kid] = _jwk_key(jwk, pinned)
        except ValueError as exc:
            unusable[kid] = str(exc)
    return KeySet(keys, unusable)


_JWK_TYPES = {("OKP", "Ed25519"), ("EC", "P-256"), ("RSA", None)}


def _jwk_key(jwk: dict[str, Any], pinned: frozenset[str]) -> IssuerKey:
    if _SECRET_MEMBERS & set(jwk):
        raise ValueError("holds private or symmetric key material; a JWKS publishes public keys")
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if use is not None and use != "sig":
        raise ValueError(f"`use` is {use!r}, not 'sig'")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("`key_ops` does not include 'verify'")
    kty = jwk.get("kty")
    curve = jwk.get("crv") if kty in ("OKP", "EC") else None
    # Membership tests below hash these: a list or object here must be refused, not crash.
    if (
        not isinstance(kty, str)
        or not isinstance(curve, str | None)
        or (kty, curve) not in _JWK_TYPES
    ):
        kind = f"kty {kty!r}" + (f" crv {curve!r}" if curve is not None else "")
        raise ValueError(f"{kind} is not accepted; use OKP Ed25519, EC P-256 or RSA")
    parse_as = {"OKP": "EdDSA", "EC": "ES256", "RSA": "RS256"}[kty]
    try:
        key = jwt.PyJWK(jwk, algorithm=parse_as).key
    except jwt.PyJWTError as exc:
        # pyjwt's message quotes the whole JWK; the class name is enough here.
        raise ValueError(f"malformed {kty} key ({type(exc).__name__})") from exc
    if not isinstance(key, VerifyKey):
        raise ValueError(f"{type(key).__name__} is not a public key")
    algorithms = algorithms_of(key)
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in algorithms:
            raise ValueError(f"its `alg` {alg!r} does not fit its key type ({kty})")
        algorithms = frozenset({alg})
    return IssuerKey(key, _usable(algorithms, pinned))


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``url``, the port filled in; None if it has no valid one."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def _is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK_HOSTS


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the configured URL's scheme, host and port.

    ``jwks_url_problem`` alone is not enough for a redirect target: it allows
    http to loopback, so an https provider (or whoever answers for it) could
    send the gateway to a plain-HTTP admin port on its own host. A provider
    that moved its keys elsewhere is configured with the new URL instead.
    """

    def __init__(self, configured: str) -> None:
        super().__init__()
        self._origin = _origin(configured)

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        problem = jwks_url_problem(newurl)
        if problem is None and _origin(newurl) != self._origin:
            problem = (
                f"{shown(newurl)!r}, outside the configured URL's scheme, host and port; "
                "set `jwks_url` to the URL the provider redirects to"
            )
        if problem:
            fp.close()  # urllib would read and close it after a redirect it follows
            raise JwksError(f"redirected to {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def shown(url: str) -> str:
    """A URL for logs and messages: no query string or fragment, which may hold secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def fetch_jwks(url: str, *, timeout_s: float, max_bytes: int) -> bytes:
    """GET ``url``; JwksError if it fails, is not 200, or is larger than ``max_bytes``."""
    problem = jwks_url_problem(url)
    if problem:
        raise JwksError(problem)
    handlers: list[urllib.request.BaseHandler] = [_SameOriginRedirects(url)]
    if _is_loopback(url):
        # A request to this host (and its same-origin redirects) never goes
        # through an environment proxy: the proxy would see it and could answer it.
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(  # noqa: S310  # scheme checked by jwks_url_problem
        url, headers={"Accept": "application/json", "User-Agent": "liaison-gateway"}
    )
    deadline = time.monotonic() + timeout_s
    try:
        with opener.open(request, timeout=timeout_s) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = b""
            # Read in pieces against one deadline: a server dripping bytes
            # slower than the socket timeout must not hold a worker forever.
            while len(body) <= max_bytes:
                if time.monotonic() > deadline:
                    raise JwksError(f"no complete answer within {timeout_s:g} s")
                piece = response.read(min(65536, max_bytes + 1 - len(body)))
                if not piece:
                    return body
                body += piece
            raise JwksError(f"answer is larger than {max_bytes} bytes")
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response; an unclosed one leaks its socket
        raise JwksError(f"HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise JwksError(f"cannot fetch ({exc.reason})") from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, JwksError):
            raise
        raise JwksError(f"cannot fetch ({type(exc).__name__}: {exc})") from exc


class IssuerKeys:
    """The keys of one issuer from all its sources, refreshed under a rate limit.

    ``current`` is an immutable snapshot, swapped whole on refresh, so readers
    on the event loop never see a half-updated set. ``claim_refresh`` decides
    (atomically) whether a caller should refresh now; ``refresh`` does the
    blocking work and belongs on a worker thread when called from asyncio.
    """

    def __init__(
        self,
        issuer: Issuer,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = JWKS_TIMEOUT_S,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        self.issuer = issuer.issuer
        self._pinned = frozenset(issuer.algorithms)
        self._file = issuer.jwks_file
        self._url = issuer.jwks_url
        self._refresh_s = issuer.jwks_refresh_s
        self._min_refresh_s = issuer.jwks_min_refresh_s
        self._clock = clock
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._static = load_pem_keys(issuer)
        self._from_file = KeySet()
        self._file_stamp: tuple[int, int] | None = None
        self._from_url = KeySet()
        # Why the last fetch of the URL failed (None after a success): for `gateway check`.
        self.fetch_error: str | None = None
        self._claim_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_attempt = clock()
        self.current = KeySet(dict(self._static))
        self._load_at_start()

    @property
    def jwks_url(self) -> str | None:
        return self._url

    @property
    def refreshable(self) -> bool:
        return self._file is not None or self._url is not None

    def _load_at_start(self) -> None:
        """Read the file (its faults are config errors) and fetch the URL once."""
        if self._file is not None:
            try:
                self._read_file()
            except (OSError, JwksError) as exc:
                raise ConfigError(f"issuer {self.issuer!r}: jwks_file {self._file}: {exc}") from exc
        fetch_error = None
        if self._url is not None:
            fetch_error = self._fetch_url()
        self._merge()
        if self.current.unusable:
            log.warning(
                "issuer keys skipped",
                extra={"issuer": self.issuer, "unusable": dict(self.current.unusable)},
            )
        if not self.current.keys:
            why = [f"jwks_url {shown(self._url or '')}: {fetch_error}"] if fetch_error else []
            why += [f"kid {kid!r}: {reason}" for kid, reason in self.current.unusable.items()]
            raise ConfigError(
                f"issuer {self.issuer!r} has no usable signing key"
                + (f" ({'; '.join(why)})" if why else "")
                + "; fix the provider's JWKS URL or network access, or add `jwks_file` or "
                "`public_keys` to its [[issuer]]"
            )

    def claim_refresh(self, *, kid_known: bool) -> bool:
        """True if the caller should refresh now: the schedule is due, or (for an
        unknown kid) the minimum interval has passed. Claiming starts the interval,
        so concurrent callers get one True between them."""
        if not self.refreshable:
            return False
        with self._claim_lock:
            waited = self._clock() - self._last_attempt
            due = waited >= self._refresh_s or (not kid_known and waited >= self._min_refresh_s)
            if due:
                self._last_attempt = self._clock()
            return due

    def refresh(self) -> None:
        """Re-read the file if it changed and refetch the URL; keep what fails. Blocking."""
        with self._refresh_lock:
            before = self.current
            if self._file is not None:
                try:
                    self._read_file()
                except (OSError, JwksError) as exc:
                    log.warning(
                        "jwks file unreadable; keeping its last good keys",
                        extra={"issuer": self.issuer, "source": str(self._file), "error": str(exc)},
                    )
            if self._url is not None:
                self._fetch_url()
            self._merge()
            self._log_change(before, self.current)

    def _read_file(self) -> None:
        assert self._file is not None
        stat = self._file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._file_stamp:
            raw = _read_capped(self._file, self._max_bytes)
            self._from_file = parse_jwks(raw, self._pinned)
            self._file_stamp = stamp

    def _fetch_url(self) -> str | None:
        """Fetch and parse the URL into ``_from_url``; on failure log, keep, return why."""
        assert self._url is not None
        try:
            raw = fetch_jwks(self._url, timeout_s=self._timeout_s, max_bytes=self._max_bytes)
            self._from_url = parse_jwks(raw, self._pinned)
        except JwksError as exc:
            log.warning(
                "jwks fetch failed; keeping the last good keys",
                extra={"issuer": self.issuer, "source": shown(self._url), "error": str(exc)},
            )
            self.fetch_error = str(exc)
            return self.fetch_error
        self.fetch_error = None
        return None

    def _merge(self) -> None:
        """One kid -> key map over all sources; a kid two sources disagree on is unusable."""
        keys: dict[str, IssuerKey] = {}
        unusable: dict[str, str] = {}
        for source in (KeySet(self._static), self._from_file, self._from_url):
            unusable.update(source.unusable)
            for kid, key in source.keys.items():
                if kid in keys and keys[kid] != key:
                    unusable[kid] = "names different keys in different key sources of the issuer"
                else:
                    keys[kid] = key
        for kid in unusable:
            keys.pop(kid, None)
        self.current = KeySet(keys, unusable)

    def _log_change(self, before: KeySet, after: KeySet) -> None:
        added = sorted(set(after.keys) - set(before.keys))
        removed = sorted(set(before.keys) - set(after.keys))
        if added or removed:
            log.info(
                "issuer keys changed",
                extra={"issuer": self.issuer, "kids_added": added, "kids_removed": removed},
            )
        if after.unusable and after.unusable != before.unusable:
            log.warning(
                "issuer keys skipped",
                extra={"issuer": self.issuer, "unusable": dict(after.unusable)},
            )


def _read_capped(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise JwksError(f"larger than {max_bytes} bytes")
    return raw
