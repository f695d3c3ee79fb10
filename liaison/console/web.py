"""The console's web application: sign-in, sessions, CSRF, headers, and each side's pages.

Every page and every action is authorised here, on the server, from the
signed-in person's verified identity (:func:`view`, :func:`action`); the
gateway or node then checks the same person's token again. Forms are plain
HTML posts (they work with the keyboard and without script); the only script
is the one that hashes image files in the browser.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from liaison.console.config import ConsoleConfig
from liaison.console.oidc import OidcClient, SignedIn
from liaison.console.sessions import (
    COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_TTL_S,
    Session,
    SessionStore,
    SignInSeal,
)
from liaison.errors import (
    AuthenticationError,
    ConfigError,
    InvalidQuery,
    LiaisonError,
    NotFound,
    PolicyDenied,
    UsageError,
)

log = logging.getLogger("liaison.console")
access = logging.getLogger("liaison.console.access")

HERE = Path(__file__).resolve().parent
# Anything bigger is not a form a person filled in (a hash list of 100,000
# SHA-256 values is 6.5 MB).
MAX_BODY_BYTES = 16 * 1024 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Not no-referrer: with it, browsers send `Origin: null` on our own form posts.
    (b"referrer-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]

ViewHandler = Callable[[Request, SignedIn], Awaitable[Response]]
ActionHandler = Callable[[Request, SignedIn, FormData], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Side:
    """One user's part of the console: its pages, who may see them, its menu entries."""

    name: str
    title: str
    role: str
    home: str
    routes: list[BaseRoute]
    nav: list[tuple[str, str]] = field(default_factory=list)
    # Only people of these agencies (a node's console serves its own agency's officers).
    agencies: frozenset[str] | None = None

    def admits(self, user: SignedIn) -> bool:
        if self.agencies is not None and user.agency not in self.agencies:
            return False
        return self.role in user.roles


class Console:
    """What every page needs: config, templates, sessions, the identity provider, the sides."""

    def __init__(self, config: ConsoleConfig, oidc: OidcClient | None = None) -> None:
        self.config = config
        self.sessions = SessionStore(config.session_ttl_s)
        self.seal = SignInSeal()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.oidc = oidc
        self.sides: list[Side] = []
        self.public_url = config.public_url
        # Paths (by prefix) that take bigger bodies than a form: uploads of ledger copies.
        self.body_limits: dict[str, int] = {}

    def body_limit(self, path: str) -> int:
        for prefix, limit in self.body_limits.items():
            if path.startswith(prefix):
                return limit
        return MAX_BODY_BYTES

    def origin(self, request: Request) -> str:
        """This console's origin, as a browser names it in the Origin header."""
        if self.public_url is not None:
            return normal_origin(self.public_url)
        return normal_origin(f"https://{request.headers.get('host', '')}")

    def redirect_uri(self) -> str:
        if self.public_url is None:
            raise ConfigError("the console's public URL is not known yet")
        return f"{self.public_url}/signin/callback"

    def identity_provider(self) -> OidcClient:
        if self.oidc is None:
            o = self.config.oidc
            self.oidc = OidcClient(
                o.issuer,
                o.client_id,
                self.redirect_uri(),
                ca=o.ca,
                client_secret=o.client_secret,
                agency_claim=o.agency_claim,
                roles_claim=o.roles_claim,
            )
        return self.oidc

    def render(
        self, request: Request, template: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        session = session_of(request)
        user = session.user if session else None
        nav = [s for s in self.sides if user is not None and s.admits(user)]
        html = self.templates.get_template(template).render(
            user=user,
            csrf=session.csrf if session else "",
            sides=nav,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)


def normal_origin(url: str) -> str:
    """``url``'s origin as browsers write it: lower-case host, no default port."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def session_of(request: Request) -> Session | None:
    session: Session | None = getattr(request.state, "session", None)
    return session


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _signed_in(request: Request, role: str, side: Side | None) -> SignedIn:
    session = session_of(request)
    if session is None or session.user is None:
        raise HTTPException(401, "sign in first")
    user = session.user
    if side is not None and not side.admits(user):
        raise HTTPException(403, f"this page is for the role {side.role!r}")
    if side is None and role not in user.roles:
        raise HTTPException(403, f"this page is for the role {role!r}")
    return user


def view(path: str, side: Side | str, handler: ViewHandler) -> Route:
    """A GET page for the side's role only (or a role named directly)."""

    async def endpoint(request: Request) -> Response:
        s = side if isinstance(side, Side) else None
        user = _signed_in(request, s.role if s else str(side), s)
        return await handler(request, user)

    return Route(path, endpoint, methods=["GET"])


async def checked_form(request: Request, max_files: int = 0) -> FormData:
    """The posted form, once its CSRF token and origin match this session."""
    session = session_of(request)
    if session is None:
        raise HTTPException(403, "no session: sign in again")
    origin = request.headers.get("origin")
    if origin is not None and normal_origin(origin) != console_of(request).origin(request):
        raise HTTPException(403, "a form from another site was refused")
    form = await request.form(max_files=max_files, max_fields=1_000, max_part_size=MAX_BODY_BYTES)
    token = form.get("csrf")
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a 500).
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        await form.close()
        raise HTTPException(403, "the form's security token does not match; reload the page")
    return form


def action(path: str, side: Side | str, handler: ActionHandler, *, max_files: int = 0) -> Route:
    """A POST action for the side's role only; the CSRF token is checked first.

    ``max_files``: how many uploaded files the form may carry (none unless said).
    """

    async def endpoint(request: Request) -> Response:
        s = side if isinstance(side, Side) else None
        user = _signed_in(request, s.role if s else str(side), s)
        form = await checked_form(request, max_files)
        try:
            return await handler(request, user, form)
        finally:
            # Uploaded files sit in temporary files until closed.
            await form.close()

    return Route(path, endpoint, methods=["POST"])


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _section(request: Request) -> str:
    return request.url.path.strip("/").split("/", 1)[0]


def keep(request: Request, value: Any) -> str:
    """Keep ``value`` in the session for a redirect-after-post; return its opaque key.

    It is kept for this section of the console (``/investigate``, ``/audit``...)
    only, so a key cannot be replayed at another section's page.
    """
    session = session_of(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    return session.keep((_section(request), value))


def kept_or_404(request: Request, key: str) -> Any:
    session = session_of(request)
    kept = session.kept(key) if session else None
    if kept is None or kept[0] != _section(request):
        raise HTTPException(404, "that result is no longer kept; run it again")
    return kept[1]


def form_text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value.strip() if isinstance(value, str) else default


# -- the app -----------------------------------------------------------------


class _Guard:
    """Security headers on every response, and a cap on every request body."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = self.console.body_limit(str(scope.get("path", "")))
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _plain(send, 413, b"request too large")
            return
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, "request too large")
            return message

        path = str(scope.get("path", ""))
        static = path.startswith("/static/")
        status = 0

        async def with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = list(SECURITY_HEADERS)
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        # The session is looked up once, here, for every page.
        cookie = _cookie(headers.get(b"cookie", b""))
        scope.setdefault("state", {})["session"] = self.console.sessions.get(cookie)
        started = time.perf_counter()
        try:
            await self.app(scope, capped, with_headers)
        finally:
            # The path only, never the query string (a sign-in's code and state)
            # nor a body: no selector is ever in a path.
            access.info(
                "%s %s %d %.1f ms",
                scope.get("method", ""),
                path,
                status,
                (time.perf_counter() - started) * 1000,
            )


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _cookie(raw: bytes) -> str | None:
    for part in raw.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _set_cookie(response: Response, session: Session, ttl_s: int) -> None:
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=ttl_s,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )


_STATUS_OF: tuple[tuple[type[LiaisonError], int], ...] = (
    (AuthenticationError, 401),
    (PolicyDenied, 403),
    (NotFound, 404),
    (InvalidQuery, 400),
    (UsageError, 400),
    (ConfigError, 500),
)


def status_of(exc: LiaisonError) -> int:
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 502


async def _liaison_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LiaisonError)
    status = status_of(exc)
    return console_of(request).render(
        request, "error.html", status=status, title="Refused", message=str(exc)
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 401:
        return see_other("/signin")
    return console_of(request).render(
        request,
        "error.html",
        status=exc.status_code,
        title="Not possible",
        message=str(exc.detail),
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("console page %s failed", request.url.path, exc_info=exc)
    return console_of(request).render(
        request,
        "error.html",
        status=500,
        title="Something went wrong",
        message="The console failed on this page; its log says why. Nothing was sent on your "
        "behalf after the failure.",
    )


async def _home(request: Request) -> Response:
    console = console_of(request)
    session = session_of(request)
    user = session.user if session else None
    if user is not None:
        mine = [s for s in console.sides if s.admits(user)]
        if len(mine) == 1:
            return see_other(mine[0].home)
    return console.render(request, "home.html", title="Liaison console", served=console.sides)


async def _signin(request: Request) -> Response:
    console = console_of(request)
    session = session_of(request)
    if session is not None and session.user is not None:
        # Signed in already: a link to /signin from elsewhere must not sign one out.
        return see_other("/")
    provider = console.identity_provider()
    url, pending = await run_in_threadpool(provider.begin)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        SIGN_IN_COOKIE,
        console.seal.seal(pending),
        max_age=SIGN_IN_TTL_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return response


async def _callback(request: Request) -> Response:
    console = console_of(request)
    pending = console.seal.open(request.cookies.get(SIGN_IN_COOKIE))
    if pending is None:
        raise AuthenticationError(
            "this sign-in was not started here (or took too long); sign in again"
        )
    params = dict(request.query_params.items())
    user = await run_in_threadpool(console.identity_provider().finish, pending, params)
    old = session_of(request)
    if old is not None:
        console.sessions.drop(old.id)
    fresh = console.sessions.signed_in(user)
    log.info("signed in: %s of %s (%s)", user.subject, user.agency, ", ".join(user.roles))
    response = see_other("/")
    response.delete_cookie(SIGN_IN_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    _set_cookie(response, fresh, console.config.session_ttl_s)
    return response


async def _signout(request: Request) -> Response:
    console = console_of(request)
    await checked_form(request)
    session = session_of(request)
    if session is not None:
        console.sessions.drop(session.id)
    response = see_other("/")
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


SideBuilder = Callable[[Console, Any], Side]


# Each side's module, imported only when served: a console beside a node
# needs none of the gateway's pages (nor matplotlib).
SIDE_MODULES = {
    "gateway": "liaison.console.investigator",
    "audit": "liaison.console.auditor",
    "node": "liaison.console.officer",
}


def _builder(name: str) -> SideBuilder:
    builder: SideBuilder = importlib.import_module(SIDE_MODULES[name]).side
    return builder


def build_console(
    config: ConsoleConfig, *, oidc: OidcClient | None = None, sides: Iterable[str] | None = None
) -> Console:
    """The console with each side its config names (or only ``sides``)."""
    console = Console(config, oidc)
    for name, table in config.sides.items():
        if sides is None or name in sides:
            console.sides.append(_builder(name)(console, table))
    return console


def asgi_app(console: Console) -> ASGIApp:
    """The ASGI application serving ``console``: guard outside, routes inside."""
    routes: list[BaseRoute] = [
        Route("/", _home, methods=["GET"]),
        Route("/signin", _signin, methods=["GET"]),
        Route("/signin/callback", _callback, methods=["GET"]),
        Route("/signout", _signout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    for side in console.sides:
        routes.extend(side.routes)
    app = Starlette(
        routes=routes,
        exception_handlers={
            LiaisonError: _liaison_error,
            HTTPException: _http_error,
            500: _internal_error,
        },
    )
    app.state.console = console
    return _Guard(app, console)
