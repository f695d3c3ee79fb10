"""A DEVELOPMENT OpenID Connect provider, for the demo and tests only. Never in production.

It signs anyone in as any configured user at the click of a button: there
are no passwords, no accounts and no consent. It exists so that the web
console's real sign-in code (authorization code flow with PKCE, id token
verification against a JWKS) can be run end to end without Keycloak or
Entra ID. Its keys are development keys (``liaison init``, ``idp/<agency>.key``)
that gateways trust only in development federations.

Each agency has its own issuer, ``<base URL>/<agency>``, with the usual
endpoints beneath it (discovery, JWKS, authorize, token). Access tokens are
exactly what ``liaison token issue`` makes (issuer ``dev_issuer(agency)``, the
client's configured audience), so a gateway or node inbox that trusts the
development key accepts them unchanged; id tokens name this provider's own
issuer URL and the client, as OpenID Connect requires.

Instead of registered redirect URIs, a development-only relaxation: any
``http(s)`` URI on a loopback host (127.0.0.1, localhost, ::1) with the path
``/signin/callback`` is accepted, and nothing else is ever redirected to.
Codes are 256-bit random, single use (one attempt, right or wrong), valid
for 60 s and bound to the client, redirect URI, PKCE challenge, nonce and
user. The sign-in page sends a strict Content-Security-Policy, refuses to be
framed, and its form carries a one-time token bound server-side to the
request and to a SameSite=Strict cookie, so a cross-site form post cannot
sign anyone in.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from liaison.config import LOOPBACK_HOSTS
from liaison.identity.dev_oidc_config import DevAgency, DevClient, DevIdpConfig, DevUser
from liaison.identity.pkce import b64url, s256
from liaison.tokens import issue_dev_token

CODE_TTL_S = 60
PAGE_TTL_S = 600
TOKEN_TTL_S = 3600
CALLBACK_PATH = "/signin/callback"
MAX_PARAM_CHARS = 512
# Pending pages and codes are held in memory; past these, the oldest go first.
MAX_PENDING = 1024
PAGE_COOKIE = "dev_idp_page"
# RFC 7636: BASE64URL(SHA256(verifier)) without padding is 43 characters.
_CHALLENGE_CHARS = 43
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)
_NOT_FOR_PRODUCTION = "Development identity provider (not for production)"


class _Refused(Exception):
    """An authorize request that gets an error page (never a redirect)."""


@dataclass(frozen=True, slots=True)
class _AuthRequest:
    client: DevClient
    redirect_uri: str
    state: str
    nonce: str
    code_challenge: str

    def as_form(self) -> dict[str, str]:
        return {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid",
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }


@dataclass(frozen=True, slots=True)
class _Page:
    agency: str
    request: _AuthRequest
    cookie: str
    expires: float


@dataclass(frozen=True, slots=True)
class _Grant:
    agency: str
    request: _AuthRequest
    user: DevUser
    auth_time: int
    expires: float


def redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` may not be redirected to (None if it may); the dev-only rule."""
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018  # raises ValueError for a malformed port
    except ValueError:
        return "its port is not a number"
    if parts.scheme not in ("http", "https"):
        return "it is not an http(s) URI"
    if parts.hostname not in LOOPBACK_HOSTS or parts.username is not None:
        return f"its host is not a loopback host ({', '.join(LOOPBACK_HOSTS)})"
    if parts.path != CALLBACK_PATH or "?" in uri or "#" in uri:
        return f"its path is not {CALLBACK_PATH} (with no query or fragment)"
    return None


def _origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def jwk_of(agency: DevAgency) -> dict[str, str]:
    """The agency's public key as an OKP/Ed25519 JWK, named by Liaison's key id."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(agency.key.verifying_key.raw),
        "kid": agency.key.key_id,
        "use": "sig",
        "alg": "EdDSA",
    }


def _security_headers(response: Response, *, form_target: str | None = None) -> Response:
    # The redirect after the form post must be allowed by form-action too:
    # browsers apply it to the redirect's target, not just the form's action.
    form_action = "'self'" + (f" {form_target}" if form_target else "")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'none'; img-src 'none'; base-uri 'none'; "
        f"form-action {form_action}; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(title: str, body: str, status: int = 200, *, form_target: str | None = None) -> Response:
    text = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n<main>\n"
        f"<h1>{html.escape(_NOT_FOR_PRODUCTION)}</h1>\n{body}</main>\n</body>\n</html>\n"
    )
    return _security_headers(HTMLResponse(text, status_code=status), form_target=form_target)


def _error_page(message: str, status: int = 400) -> Response:
    body = (
        f'<p role="alert">Sign-in refused: {html.escape(message)}</p>\n'
        "<p>Nothing was sent back to the application. Start the sign-in again from it.</p>\n"
    )
    return _page("Sign-in refused", body, status)


def _token_error(error: str, description: str, status: int = 400) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


class DevOidcProvider:
    """The provider's state (pending pages, codes) and its request handlers."""

    def __init__(self, config: DevIdpConfig, base_url: str) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self._pages: dict[str, _Page] = {}
        self._codes: dict[str, _Grant] = {}

    def issuer(self, agency: str) -> str:
        return f"{self.base_url}/{agency}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{agency}/.well-known/openid-configuration", self.discovery),
                Route("/{agency}/jwks", self.jwks),
                Route("/{agency}/authorize", self.authorize_page, methods=["GET"]),
                Route("/{agency}/authorize", self.authorize_post, methods=["POST"]),
                Route("/{agency}/token", self.token, methods=["POST"]),
                Route("/", self.index),
            ]
        )

    # --- handlers -----------------------------------------------------------------

    def _agency(self, request: Request) -> DevAgency | None:
        return self.config.agencies.get(str(request.path_params["agency"]))

    async def index(self, request: Request) -> Response:
        items = "".join(
            f"<li>{html.escape(self.issuer(a))}</li>\n" for a in sorted(self.config.agencies)
        )
        return _page(_NOT_FOR_PRODUCTION, f"<p>Issuers served here:</p>\n<ul>\n{items}</ul>\n")

    async def discovery(self, request: Request) -> Response:
        agency = self._agency(request)
        if agency is None:
            return JSONResponse({"error": "unknown agency"}, status_code=404)
        issuer = self.issuer(agency.id)
        doc: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
            "scopes_supported": ["openid"],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "name",
                "agency",
                "roles",
                "attributes",
            ],
        }
        return JSONResponse(doc)

    async def jwks(self, request: Request) -> Response:
        agency = self._agency(request)
        if agency is None:
            return JSONResponse({"error": "unknown agency"}, status_code=404)
        return JSONResponse({"keys": [jwk_of(agency)]})

    async def authorize_page(self, request: Request) -> Response:
        agency = self._agency(request)
        if agency is None:
            return _error_page("no such agency at this provider", 404)
        try:
            auth = self._checked(request.query_params)
        except _Refused as exc:
            return _error_page(str(exc))
        users = [u for u in self.config.users if u.agency == agency.id]
        if not users:
            return _error_page(f"no users of {agency.id} are configured")
        self._expire()
        page_token = secrets.token_urlsafe(32)
        cookie = secrets.token_urlsafe(32)
        self._pages[page_token] = _Page(agency.id, auth, cookie, time.time() + PAGE_TTL_S)
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">\n'
            for name, value in [*auth.as_form().items(), ("page_token", page_token)]
        )
        buttons = "".join(_user_button(i, u) for i, u in enumerate(users))
        body = (
            f"<p>This provider signs anyone in without a password. Use it for demos "
            f"and tests only.</p>\n"
            f'<form method="post" action="/{html.escape(agency.id)}/authorize">\n'
            f"<fieldset>\n<legend>Sign in to {html.escape(agency.id)} as:</legend>\n"
            f"{hidden}<ul>\n{buttons}</ul>\n</fieldset>\n</form>\n"
            f"<p>Signing in returns you to {html.escape(_origin(auth.redirect_uri))}.</p>\n"
        )
        response = _page(
            f"Sign in to {agency.id} (development)", body, form_target=_origin(auth.redirect_uri)
        )
        response.set_cookie(
            PAGE_COOKIE,
            cookie,
            max_age=PAGE_TTL_S,
            path=f"/{agency.id}/authorize",
            secure=self.config.tls,
            httponly=True,
            samesite="strict",
        )
        return response

    async def authorize_post(self, request: Request) -> Response:
        agency = self._agency(request)
        if agency is None:
            return _error_page("no such agency at this provider", 404)
        form = await request.form(max_files=0, max_fields=32)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        page = self._pages.pop(fields.get("page_token", ""), None)
        if page is None or page.expires < time.time() or page.agency != agency.id:
            return _error_page(
                "this sign-in page has expired or was not issued by this provider", 403
            )
        cookie = request.cookies.get(PAGE_COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), page.cookie.encode()):
            return _error_page("the sign-in was not sent from this provider's page", 403)
        try:
            auth = self._checked(fields)
        except _Refused as exc:
            return _error_page(str(exc))
        if auth != page.request:
            return _error_page("the sign-in form was altered; start again", 403)
        subject = fields.get("subject", "")
        user = next(
            (u for u in self.config.users if u.agency == agency.id and u.subject == subject), None
        )
        if user is None:
            return _error_page(f"no user {subject!r} at {agency.id}")
        self._expire()
        code = secrets.token_urlsafe(32)
        now = time.time()
        self._codes[code] = _Grant(agency.id, auth, user, int(now), now + CODE_TTL_S)
        query = urlencode({"code": code, "state": auth.state, "iss": self.issuer(agency.id)})
        response = RedirectResponse(f"{auth.redirect_uri}?{query}", status_code=303)
        response.delete_cookie(PAGE_COOKIE, path=f"/{agency.id}/authorize")
        return _security_headers(response)

    async def token(self, request: Request) -> Response:
        agency = self._agency(request)
        if agency is None:
            return _token_error("invalid_request", "no such agency at this provider", 404)
        if request.headers.get("content-type", "").split(";")[0].strip() != (
            "application/x-www-form-urlencoded"
        ):
            return _token_error("invalid_request", "send application/x-www-form-urlencoded")
        form = await request.form(max_files=0, max_fields=16)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if fields.get("grant_type") != "authorization_code":
            return _token_error(
                "unsupported_grant_type", "only grant_type=authorization_code is supported"
            )
        client = self.config.clients.get(fields.get("client_id", ""))
        if client is None:
            return _token_error("invalid_client", "unknown client_id", 401)
        if client.client_secret is not None and not hmac.compare_digest(
            fields.get("client_secret", "").encode(), client.client_secret.encode()
        ):
            return _token_error("invalid_client", "client authentication failed", 401)
        # One attempt per code, right or wrong: a guessed verifier gets no second try.
        grant = self._codes.pop(fields.get("code", ""), None)
        problem = _grant_problem(grant, agency.id, client, fields)
        if problem is not None or grant is None:
            return _token_error("invalid_grant", problem or "unknown code")
        body = {
            "access_token": issue_dev_token(
                agency.key,
                issuer=agency.token_issuer,
                audience=client.audience,
                agency=agency.id,
                subject=grant.user.subject,
                roles=grant.user.roles,
                attributes=dict(grant.user.attributes),
                ttl_s=TOKEN_TTL_S,
            ),
            "id_token": self._id_token(agency, client, grant),
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL_S,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # --- helpers ------------------------------------------------------------------

    def _checked(self, params: Mapping[str, str]) -> _AuthRequest:
        """The authorize request's parameters, all checked, or _Refused saying which is wrong."""
        client = self.config.clients.get(params.get("client_id", ""))
        if client is None:
            raise _Refused("unknown client_id; configure it as a [[dev_idp.client]]")
        redirect_uri = params.get("redirect_uri", "")
        problem = redirect_uri_problem(redirect_uri)
        if problem:
            raise _Refused(f"redirect_uri is not accepted: {problem}")
        if params.get("response_type") != "code":
            raise _Refused("response_type must be code")
        if "openid" not in params.get("scope", "").split():
            raise _Refused("scope must include openid")
        if params.get("code_challenge_method") != "S256":
            raise _Refused("PKCE is required: code_challenge_method must be S256")
        challenge = params.get("code_challenge", "")
        if len(challenge) != _CHALLENGE_CHARS or not set(challenge) <= _B64URL:
            raise _Refused("code_challenge must be a base64url SHA-256 (43 characters)")
        state, nonce = params.get("state", ""), params.get("nonce", "")
        if not state or not nonce:
            raise _Refused("state and nonce are required")
        if len(state) > MAX_PARAM_CHARS or len(nonce) > MAX_PARAM_CHARS:
            raise _Refused(f"state and nonce may be at most {MAX_PARAM_CHARS} characters")
        return _AuthRequest(client, redirect_uri, state, nonce, challenge)

    def _id_token(self, agency: DevAgency, client: DevClient, grant: _Grant) -> str:
        now = int(time.time())
        user = grant.user
        claims: dict[str, object] = {
            "iss": self.issuer(agency.id),
            "sub": user.subject,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL_S,
            "auth_time": grant.auth_time,
            "nonce": grant.request.nonce,
            "name": user.name,
            "agency": agency.id,
            "roles": list(user.roles),
        }
        if user.attributes:
            claims["attributes"] = dict(user.attributes)
        return jwt.encode(
            claims, agency.key.private_key, algorithm="EdDSA", headers={"kid": agency.key.key_id}
        )

    def _expire(self) -> None:
        now = time.time()
        for store in (self._pages, self._codes):
            for key in [k for k, v in store.items() if v.expires < now]:
                del store[key]
            while len(store) >= MAX_PENDING:
                del store[next(iter(store))]


def _grant_problem(
    grant: _Grant | None, agency: str, client: DevClient, fields: Mapping[str, str]
) -> str | None:
    if grant is None:
        return "unknown, used or expired code; sign in again"
    if grant.expires < time.time():
        return "the code has expired; sign in again"
    if grant.agency != agency or grant.request.client.client_id != client.client_id:
        return "the code was issued to another client"
    if fields.get("redirect_uri") != grant.request.redirect_uri:
        return "redirect_uri differs from the authorization request's"
    verifier = fields.get("code_verifier", "")
    if not 43 <= len(verifier) <= 128:
        return "code_verifier must be 43 to 128 characters (PKCE)"
    if not hmac.compare_digest(s256(verifier), grant.request.code_challenge):
        return "code_verifier does not match the code_challenge (PKCE)"
    return None


def _user_button(index: int, user: DevUser) -> str:
    described = f"user-{index}-roles"
    roles = ", ".join(user.roles)
    attributes = "".join(f"; {k}: {v}" for k, v in sorted(user.attributes.items()))
    return (
        f'<li><button type="submit" name="subject" value="{html.escape(user.subject)}" '
        f'aria-describedby="{described}">{html.escape(user.name)}</button> '
        f'<span id="{described}">({html.escape(user.subject)}; roles: {html.escape(roles)}'
        f"{html.escape(attributes)})</span></li>\n"
    )


def build_app(config: DevIdpConfig, base_url: str) -> Starlette:
    """The provider as an ASGI app; ``base_url`` is how clients reach it (https://HOST:PORT)."""
    return DevOidcProvider(config, base_url).app()
