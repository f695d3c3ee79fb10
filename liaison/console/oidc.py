"""The console's OpenID Connect client: authorization code flow with PKCE.

Any OpenID Connect provider works (Keycloak, Entra ID, the development
provider in :mod:`liaison.identity.dev_oidc`): its discovery document says
where to send the browser and where to exchange the code, and its JWKS holds
the keys that sign id tokens. The console keeps a :class:`PendingSignIn`
server-side between :meth:`OidcClient.begin` and :meth:`OidcClient.finish`
and gets back a :class:`SignedIn`, whose ``access_token`` is the bearer
token it presents to the gateway or a node's inbox on the user's behalf.

Every fetch is HTTPS verified against the configured CA (plain http only to
loopback), has a timeout and a size cap, and follows no redirects. An id
token is accepted only under a key from the provider's JWKS, with an
algorithm pinned here (never ``none`` nor HMAC), from the configured issuer,
for this client, unexpired, and carrying the nonce this sign-in began with.
Tokens are never logged or put into error messages.

Errors: :class:`~liaison.errors.AuthenticationError` when a sign-in cannot be
completed (the user can start again), :class:`~liaison.errors.ConfigError`
when the provider cannot be used as configured (an operator must act).
"""

from __future__ import annotations

import hmac
import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt

from liaison.config import LOOPBACK_HOSTS
from liaison.errors import AuthenticationError, ConfigError
from liaison.identity.claims import claim
from liaison.identity.jwks import JwksError, KeySet, parse_jwks, shown
from liaison.identity.pkce import s256

SIGN_IN_TTL_S = 600
LEEWAY_S = 60
MAX_DOCUMENT_BYTES = 256 * 1024
SAFE_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256", "PS256"})
# Keys are refetched for an unknown kid at most this often (provider key rotation).
MIN_JWKS_REFRESH_S = 30.0
MAX_SHOWN_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """What the console needs back from a sign-in under way (sealed in a cookie meanwhile)."""

    state: str
    nonce: str
    code_verifier: str
    started_at: float


@dataclass(frozen=True, slots=True)
class SignedIn:
    subject: str
    name: str
    agency: str
    roles: tuple[str, ...]
    issuer: str
    # The bearer token the console presents to the gateway or a node inbox.
    access_token: str
    # Unix seconds: the earlier of the id token's exp and the access token's expires_in.
    expires_at: float

    def __repr__(self) -> str:
        # A SignedIn in a log line or a traceback must not carry the token.
        return (
            f"SignedIn(subject={self.subject!r}, agency={self.agency!r}, roles={self.roles!r}, "
            f"issuer={self.issuer!r}, expires_at={self.expires_at!r})"
        )


@dataclass(frozen=True, slots=True)
class _Provider:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class _UnknownKid(Exception):
    """The id token names a key the cached JWKS lacks; refetch once, then refuse."""


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be used to talk to a provider (None if it may)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  # raises ValueError for a malformed port
    except ValueError:
        return f"{shown(url)!r} has a malformed port"
    if parts.username is not None or parts.password is not None:
        return f"{parts.scheme}://{parts.hostname}: credentials do not belong in the URL"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None  # a provider on this host, or a test; nothing crosses a network
    return f"{shown(url)!r} is not an https:// URL (plain http is only allowed to loopback)"


def _shown_text(value: str) -> str:
    """Provider-supplied text, made safe to put in a message: printable, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value)
    if len(cleaned) > MAX_SHOWN_ERROR_CHARS:
        return cleaned[:MAX_SHOWN_ERROR_CHARS] + "…"
    return cleaned


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        fp.close()
        raise urllib.error.URLError(
            f"redirected (HTTP {code}) to {shown(newurl)}; configure that URL instead"
        )


def _fetch(
    url: str,
    *,
    context: ssl.SSLContext,
    timeout_s: float,
    form: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET (or POST ``form`` to) ``url``: (status, body). OSError/URLError if it cannot.

    Error statuses are returned, not raised: a token endpoint explains
    itself in a 400's JSON body.
    """
    handlers: list[urllib.request.BaseHandler] = [
        _NoRedirects(),
        urllib.request.HTTPSHandler(context=context),
    ]
    if urlsplit(url).hostname in LOOPBACK_HOSTS:
        # A local provider is never reached through an environment proxy.
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    data = urlencode(dict(form)).encode("ascii") if form is not None else None
    headers = {"Accept": "application/json", "User-Agent": "liaison-console"}
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310  # scheme checked by url_problem
    deadline = time.monotonic() + timeout_s
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if getattr(exc, "fp", None) is None:  # typeshed says never; urllib says sometimes
            return exc.code, b""
        response = exc
    with response:
        body = b""
        # Read in pieces against one deadline: a provider dripping bytes must not hold us.
        while len(body) <= MAX_DOCUMENT_BYTES:
            if time.monotonic() > deadline:
                raise OSError(f"no complete answer within {timeout_s:g} s")
            piece = response.read(min(65536, MAX_DOCUMENT_BYTES + 1 - len(body)))
            if not piece:
                return int(response.status or 0), body
            body += piece
    raise OSError(f"answer is larger than {MAX_DOCUMENT_BYTES} bytes")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def verify_id_token(
    token: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: tuple[str, ...],
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` if it is a valid id token for this sign-in; raise otherwise.

    Raises AuthenticationError, or _UnknownKid (internal) when the token names
    a key ``keys`` lacks, so the caller may refetch the provider's keys once.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(
            "the identity provider sent an id token that is not a JWT; sign in again, "
            "and if it recurs ask the provider's administrator"
        ) from exc
    alg, kid = header.get("alg"), header.get("kid")
    pinned = SAFE_ALGORITHMS & set(algorithms)
    if not isinstance(alg, str) or alg not in pinned:
        raise AuthenticationError(
            f"id token algorithm {_shown_text(str(alg))!r} is not accepted "
            f"(accepted: {', '.join(sorted(pinned))}); sign in again"
        )
    if isinstance(kid, str) and kid in keys.keys:
        chosen = keys.keys[kid]
    elif kid is None and len(keys.keys) == 1:
        chosen = next(iter(keys.keys.values()))
    elif isinstance(kid, str) and kid in keys.unusable:
        raise AuthenticationError(
            f"id token key {_shown_text(kid)!r} is published but not usable here "
            f"({keys.unusable[kid]}); ask the provider's administrator"
        )
    else:
        raise _UnknownKid
    if alg not in chosen.algorithms:
        raise AuthenticationError(
            f"id token says {alg!r} but its key is for "
            f"{' or '.join(sorted(chosen.algorithms))}; sign in again"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            chosen.key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationError(
            "the id token has expired; check this machine's clock, then sign in again"
        ) from exc
    except jwt.InvalidAudienceError as exc:
        raise AuthenticationError(
            f"the id token was issued to another client, not {client_id!r}; check the "
            "console's client id at the provider, then sign in again"
        ) from exc
    except jwt.InvalidIssuerError as exc:
        raise AuthenticationError(
            f"the id token is from another issuer, not {issuer!r}; sign in again"
        ) from exc
    except jwt.ImmatureSignatureError as exc:
        raise AuthenticationError(
            "the id token is issued in the future; check this machine's clock, then sign in again"
        ) from exc
    except jwt.InvalidSignatureError as exc:
        raise AuthenticationError(
            "the id token's signature does not verify under the provider's keys; sign in again"
        ) from exc
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the id token is not acceptable ({exc}); sign in again") from exc
    checked = time.time() if now is None else now
    iat = claims["iat"]
    if not isinstance(iat, int | float) or iat > checked + LEEWAY_S:
        raise AuthenticationError(
            "the id token is issued in the future; check this machine's clock, then sign in again"
        )
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        # OpenID Connect Core 3.1.3.7: several audiences need azp naming us.
        raise AuthenticationError(
            "the id token names several audiences but not this console as its `azp`; sign in again"
        )
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise AuthenticationError(
            "the id token's nonce is not this sign-in's (a replayed or mixed-up response); "
            "sign in again"
        )
    return claims


class OidcClient:
    """One console's relying party for one provider (one issuer). Thread-safe."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        redirect_uri: str,
        *,
        ca: Path | None = None,
        client_secret: str | None = None,
        scope: str = "openid",
        algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256"),
        timeout_s: float = 5.0,
        agency_claim: str = "agency",
        roles_claim: str = "roles",
    ) -> None:
        for what, url in (("issuer", issuer), ("redirect_uri", redirect_uri)):
            problem = url_problem(url)
            if problem:
                raise ConfigError(f"console OIDC `{what}`: {problem}")
        unsafe = set(algorithms) - SAFE_ALGORITHMS
        if unsafe or not algorithms:
            raise ConfigError(
                f"console OIDC `algorithms`: {', '.join(sorted(unsafe)) or 'none given'}; "
                f"choose from {', '.join(sorted(SAFE_ALGORITHMS))} (never none or HS*)"
            )
        if "openid" not in scope.split():
            raise ConfigError(f"console OIDC `scope` {scope!r} must include openid")
        if not client_id:
            raise ConfigError("console OIDC `client_id` must not be empty")
        self.issuer = issuer
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.algorithms = tuple(algorithms)
        self.agency_claim = agency_claim
        self.roles_claim = roles_claim
        self._client_secret = client_secret
        self._timeout_s = timeout_s
        try:
            self._context = ssl.create_default_context(cafile=None if ca is None else str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"console OIDC `ca` {ca}: not a readable PEM CA file ({exc})"
            ) from exc
        self._lock = threading.Lock()
        self._provider: _Provider | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0

    # --- the flow -----------------------------------------------------------------

    def begin(self) -> tuple[str, PendingSignIn]:
        """The URL to send the browser to, and what to keep server-side until it returns."""
        provider = self._discovered()
        pending = PendingSignIn(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),  # 86 characters: within RFC 7636's 43..128
            started_at=time.time(),
        )
        challenge = s256(pending.code_verifier)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": self.scope,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = provider.authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", pending

    def finish(self, pending: PendingSignIn, params: Mapping[str, str]) -> SignedIn:
        """Check the provider's callback ``params``, exchange the code and verify the id token."""
        error = params.get("error")
        if error is not None:
            description = params.get("error_description", "")
            raise AuthenticationError(
                f"the identity provider refused the sign-in ({_shown_text(error)}"
                + (f": {_shown_text(description)}" if description else "")
                + "); sign in again, or ask its administrator"
            )
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise AuthenticationError(
                "the sign-in response does not match the sign-in this browser started "
                "(state differs); start the sign-in again"
            )
        if time.time() - pending.started_at > SIGN_IN_TTL_S:
            raise AuthenticationError(
                f"the sign-in took longer than {SIGN_IN_TTL_S // 60} minutes; start it again"
            )
        returned_issuer = params.get("iss")
        if returned_issuer is not None and returned_issuer != self.issuer:
            # RFC 9207: a response from another provider (mix-up attack).
            raise AuthenticationError(
                "the sign-in response comes from another identity provider; start again"
            )
        code = params.get("code", "")
        if not code:
            raise AuthenticationError("the sign-in response has no code; start the sign-in again")
        tokens = self._exchange(code, pending)
        claims = self._verified(tokens["id_token"], pending.nonce)
        return self._signed_in(claims, tokens)

    # --- steps --------------------------------------------------------------------

    def _exchange(self, code: str, pending: PendingSignIn) -> dict[str, Any]:
        provider = self._discovered()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.code_verifier,
        }
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret  # client_secret_post
        try:
            status, body = _fetch(
                provider.token_endpoint,
                context=self._context,
                timeout_s=self._timeout_s,
                form=form,
            )
        except (OSError, urllib.error.URLError) as exc:
            raise AuthenticationError(
                f"cannot reach the identity provider's token endpoint "
                f"{shown(provider.token_endpoint)} ({_reason(exc)}); try again shortly"
            ) from exc
        doc = _json_object(body)
        if status != 200:
            error = doc.get("error") if doc else None
            description = doc.get("error_description") if doc else None
            detail = _shown_text(str(error)) if error else f"HTTP {status}"
            if isinstance(description, str) and description:
                detail += f": {_shown_text(description)}"
            raise AuthenticationError(
                f"the identity provider refused the code ({detail}); sign in again"
            )
        if doc is None:
            raise AuthenticationError(
                "the identity provider's token response is not a JSON object; sign in again"
            )
        for name in ("access_token", "id_token"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise AuthenticationError(
                    f"the identity provider's token response has no `{name}`; check that "
                    "the console's client asks for the openid scope"
                )
        if str(doc.get("token_type", "")).lower() != "bearer":
            raise AuthenticationError(
                "the identity provider issued a token that is not a Bearer token; "
                "ask its administrator"
            )
        return doc

    def _verified(self, id_token: str, nonce: str) -> dict[str, Any]:
        keys = self._current_keys(refresh=False)
        for attempt in range(2):
            try:
                return verify_id_token(
                    id_token,
                    keys,
                    issuer=self.issuer,
                    client_id=self.client_id,
                    nonce=nonce,
                    algorithms=self.algorithms,
                )
            except _UnknownKid:
                if attempt == 0:
                    keys = self._current_keys(refresh=True)
        raise AuthenticationError(
            "the id token is signed with a key the identity provider does not publish; "
            "sign in again"
        )

    def _signed_in(self, claims: Mapping[str, Any], tokens: Mapping[str, Any]) -> SignedIn:
        agency = claim(claims, self.agency_claim)
        if not isinstance(agency, str) or not agency:
            raise AuthenticationError(
                f"the id token has no `{self.agency_claim}` claim naming your agency; ask the "
                "provider's administrator to add it (or set the console's agency claim)"
            )
        raw_roles = claim(claims, self.roles_claim)
        if isinstance(raw_roles, str):
            roles = tuple(raw_roles.split())
        elif isinstance(raw_roles, list) and all(isinstance(r, str) for r in raw_roles):
            roles = tuple(raw_roles)
        elif raw_roles is None:
            roles = ()
        else:
            raise AuthenticationError(
                f"the id token's `{self.roles_claim}` claim is not a list of roles; "
                "ask the provider's administrator"
            )
        name = claims.get("name") or claims.get("preferred_username") or claims["sub"]
        expires_at = float(claims["exp"])
        expires_in = tokens.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            expires_at = min(expires_at, time.time() + float(expires_in))
        return SignedIn(
            subject=str(claims["sub"]),
            name=str(name),
            agency=agency,
            roles=roles,
            issuer=self.issuer,
            access_token=str(tokens["access_token"]),
            expires_at=expires_at,
        )

    # --- provider metadata, cached ----------------------------------------------

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"the identity provider's {what}: {problem}")
        try:
            status, body = _fetch(url, context=self._context, timeout_s=self._timeout_s)
        except (OSError, urllib.error.URLError) as exc:
            raise ConfigError(
                f"cannot fetch the identity provider's {what} from {shown(url)} "
                f"({_reason(exc)}); check the console's issuer URL and CA"
            ) from exc
        doc = _json_object(body) if status == 200 else None
        if doc is None:
            raise ConfigError(
                f"the identity provider's {what} at {shown(url)} is not a JSON object "
                f"(HTTP {status}); check the console's issuer URL"
            )
        return doc

    def _discovered(self) -> _Provider:
        with self._lock:
            if self._provider is not None:
                return self._provider
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        doc = self._get_json(url, "discovery document")
        if doc.get("issuer") != self.issuer:
            raise ConfigError(
                f"the identity provider's discovery document names issuer "
                f"{_shown_text(str(doc.get('issuer')))!r}, not the configured {self.issuer!r}; "
                "set the console's issuer to exactly what the provider calls itself"
            )
        endpoints: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            problem = url_problem(value) if isinstance(value, str) else f"`{name}` is missing"
            if problem:
                raise ConfigError(f"the identity provider's discovery document: {problem}")
            endpoints[name] = str(value)
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ConfigError(
                "the identity provider does not support PKCE with S256; enable it for the "
                "console's client"
            )
        provider = _Provider(**endpoints)
        with self._lock:
            self._provider = provider
        return provider

    def _current_keys(self, *, refresh: bool) -> KeySet:
        with self._lock:
            cached, fetched = self._keys, self._keys_fetched
        due = refresh and time.monotonic() - fetched >= MIN_JWKS_REFRESH_S
        if cached is not None and not due:
            return cached
        provider = self._discovered()
        raw = self._get_json(provider.jwks_uri, "key set (JWKS)")
        try:
            keys = parse_jwks(json.dumps(raw).encode(), frozenset(self.algorithms))
        except JwksError as exc:
            raise ConfigError(f"the identity provider's key set (JWKS): {exc}") from exc
        with self._lock:
            self._keys, self._keys_fetched = keys, time.monotonic()
        return keys


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
