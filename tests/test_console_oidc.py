"""The console's OpenID Connect sign-in against the development provider, run for real.

The provider runs as its own process (`liaison dev-idp serve`) over TLS; the
browser's part of the flow is driven with urllib (GET the sign-in page, POST
a user's button, read the 303 without following it) and the console's part
is :class:`liaison.console.oidc.OidcClient`. Forged, expired, misaddressed
and replayed id tokens are made by hand and given to ``verify_id_token``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
import pytest

from liaison.config import Issuer, node_inbox_audience
from liaison.console.oidc import OidcClient, SignedIn, verify_id_token
from liaison.demo.processes import Service, start_service, stop_service
from liaison.errors import AuthenticationError, ConfigError
from liaison.identity.dev_oidc import jwk_of
from liaison.identity.dev_oidc_config import DevAgency, load_dev_idp_config
from liaison.identity.jwks import KeySet, parse_jwks
from liaison.identity.verify import TokenVerifier
from liaison.keys import SigningKey
from liaison.tls import CertRole, write_dev_pki
from liaison.tokens import dev_issuer

GENOVIA = "genovia"
FREEDONIA = "freedonia"
CONSOLE = "liaison-console"
OFFICER_CONSOLE = "officer-console"
OFFICER_SECRET = "officer-console-secret-for-tests"
# Never contacted: the test reads the redirect instead of following it.
REDIRECT_URI = "https://127.0.0.1:9/signin/callback"
ALICE_ATTRIBUTES = {"clearance": "secret", "unit": "victim-identification"}

CONFIG = f"""
[dev_idp]
listen = "127.0.0.1:0"
tls_cert = "pki/dev-idp.crt"
tls_key = "pki/dev-idp.key"

[[dev_idp.agency]]
id = "{GENOVIA}"
key = "genovia.key"

[[dev_idp.agency]]
id = "{FREEDONIA}"
key = "freedonia.key"

[[dev_idp.client]]
client_id = "{CONSOLE}"
audience = "liaison-gateway"

[[dev_idp.client]]
client_id = "{OFFICER_CONSOLE}"
audience = "{node_inbox_audience(FREEDONIA)}"
client_secret = "{OFFICER_SECRET}"

[[dev_idp.user]]
agency = "{GENOVIA}"
subject = "inv.alice"
name = "Alice (investigator)"
roles = ["investigator"]
attributes = {{ clearance = "secret", unit = "victim-identification" }}

[[dev_idp.user]]
agency = "{GENOVIA}"
subject = "aud.ann"
name = "Ann (auditor)"
roles = ["auditor"]

[[dev_idp.user]]
agency = "{FREEDONIA}"
subject = "duty.olga"
name = "Olga (duty officer)"
roles = ["duty-officer"]
"""


@dataclass
class DevIdp:
    base: str  # https://127.0.0.1:PORT
    ca: Path
    keys: dict[str, SigningKey]
    public_keys: dict[str, Path]
    service: Service

    def issuer(self, agency: str = GENOVIA) -> str:
        return f"{self.base}/{agency}"

    def client(self, agency: str = GENOVIA, client_id: str = CONSOLE, **kw: Any) -> OidcClient:
        return OidcClient(self.issuer(agency), client_id, REDIRECT_URI, ca=self.ca, **kw)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdp]:
    root = tmp_path_factory.mktemp("dev-idp")
    write_dev_pki(root / "pki", {"dev-idp": [CertRole.SERVER]})
    keys, public_keys = {}, {}
    for agency in (GENOVIA, FREEDONIA):
        keys[agency] = SigningKey.generate()
        public_keys[agency] = root / f"{agency}.pub"
        keys[agency].write(root / f"{agency}.key", public_keys[agency])
    config = root / "dev-idp.toml"
    config.write_text(CONFIG)
    service = start_service("dev-idp", "dev-idp", config, root / "run")
    try:
        yield DevIdp(
            f"https://{service.address}", root / "pki" / "ca.pem", keys, public_keys, service
        )
    finally:
        stop_service(service)
    # SIGTERM is a clean stop, not a crash.
    assert service.process.returncode == 0, service.log.read_text()


# --- a browser, as far as the sign-in page needs one ----------------------------


@dataclass
class Reply:
    status: int
    headers: Message
    body: str


class _Stay(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: the test reads where they point."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch(idp: DevIdp, url: str, form: Mapping[str, str] | None = None, cookie: str = "") -> Reply:
    context = ssl.create_default_context(cafile=str(idp.ca))
    opener = urllib.request.build_opener(
        _Stay(), urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({})
    )
    data = urlencode(dict(form)).encode() if form is not None else None
    request = urllib.request.Request(url, data=data)  # noqa: S310  # a test's own https URL
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with opener.open(request, timeout=5) as response:
            return Reply(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read().decode())


class _SignInPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}
        self.buttons: dict[str, str] = {}  # subject -> button name
        self._button: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a["action"]
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        elif tag == "button":
            self._button = a["value"]
            self.buttons[a["value"]] = ""

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self.buttons[self._button] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._button = None


def _page(idp: DevIdp, url: str) -> tuple[Reply, _SignInPage, str]:
    reply = _fetch(idp, url)
    assert reply.status == 200, reply.body
    page = _SignInPage()
    page.feed(reply.body)
    cookie = reply.headers["Set-Cookie"].split(";")[0]
    return reply, page, cookie


def _press(idp: DevIdp, url: str, subject: str) -> dict[str, str]:
    """Open the sign-in page at ``url``, press ``subject``'s button: the callback's params."""
    _, page, cookie = _page(idp, url)
    reply = _fetch(idp, idp.base + page.action, {**page.hidden, "subject": subject}, cookie)
    assert reply.status == 303, reply.body
    location = reply.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return dict(parse_qsl(urlsplit(location).query))


def _signed_in(idp: DevIdp, client: OidcClient, subject: str) -> SignedIn:
    url, pending = client.begin()
    return client.finish(pending, _press(idp, url, subject))


# --- the whole flow --------------------------------------------------------------


def test_investigator_signs_in_and_gets_a_gateway_token(idp: DevIdp) -> None:
    client = idp.client()
    before = time.time()

    user = _signed_in(idp, client, "inv.alice")

    assert (user.subject, user.name, user.agency, user.roles, user.issuer) == (
        "inv.alice",
        "Alice (investigator)",
        GENOVIA,
        ("investigator",),
        idp.issuer(),
    )
    assert before + 3500 < user.expires_at <= time.time() + 3600
    assert user.access_token not in repr(user)
    # The gateway, trusting the development key under dev_issuer(agency), takes it unchanged.
    gateway = TokenVerifier(
        (
            Issuer(
                issuer=dev_issuer(GENOVIA),
                agencies=frozenset({GENOVIA}),
                public_keys=(idp.public_keys[GENOVIA],),
                algorithms=("EdDSA",),
            ),
        ),
        "liaison-gateway",
    )
    requester = gateway.verify(user.access_token)
    assert (requester.agency, requester.subject, requester.roles) == (
        GENOVIA,
        "inv.alice",
        ("investigator",),
    )
    assert dict(requester.attributes) == ALICE_ATTRIBUTES


def test_duty_officer_signs_in_with_a_client_secret_for_the_node_inbox(idp: DevIdp) -> None:
    client = idp.client(FREEDONIA, OFFICER_CONSOLE, client_secret=OFFICER_SECRET)

    user = _signed_in(idp, client, "duty.olga")

    assert (user.agency, user.roles) == (FREEDONIA, ("duty-officer",))
    claims = jwt.decode(
        user.access_token,
        idp.keys[FREEDONIA].verifying_key.public_key,
        algorithms=["EdDSA"],
        audience=node_inbox_audience(FREEDONIA),
        issuer=dev_issuer(FREEDONIA),
    )
    assert claims["sub"] == "duty.olga"


def test_a_wrong_client_secret_is_refused(idp: DevIdp) -> None:
    client = idp.client(FREEDONIA, OFFICER_CONSOLE, client_secret="guessed")

    with pytest.raises(AuthenticationError, match="invalid_client"):
        _signed_in(idp, client, "duty.olga")


def test_discovery_and_jwks_describe_the_agency(idp: DevIdp) -> None:
    doc = json.loads(_fetch(idp, f"{idp.issuer()}/.well-known/openid-configuration").body)
    jwks = json.loads(_fetch(idp, f"{idp.issuer()}/jwks").body)

    assert doc["issuer"] == idp.issuer()
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["EdDSA"]
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["use"], key["kid"]) == (
        "OKP",
        "Ed25519",
        "sig",
        idp.keys[GENOVIA].key_id,
    )


# --- the console refuses ---------------------------------------------------------


def test_a_response_for_another_sign_in_is_refused(idp: DevIdp) -> None:
    client = idp.client()
    url, pending = client.begin()
    params = _press(idp, url, "inv.alice")

    with pytest.raises(AuthenticationError, match="state differs"):
        client.finish(pending, {**params, "state": "someone-elses-state"})


def test_a_replayed_code_is_refused(idp: DevIdp) -> None:
    client = idp.client()
    url, pending = client.begin()
    params = _press(idp, url, "inv.alice")
    client.finish(pending, params)

    with pytest.raises(AuthenticationError, match="invalid_grant"):
        client.finish(pending, params)


def test_a_code_with_the_wrong_pkce_verifier_is_refused_and_spent(idp: DevIdp) -> None:
    client = idp.client()
    url, pending = client.begin()
    params = _press(idp, url, "inv.alice")

    with pytest.raises(AuthenticationError, match=r"invalid_grant: code_verifier does not match"):
        client.finish(dataclasses.replace(pending, code_verifier="x" * 64), params)
    # One attempt per code: the right verifier now comes too late.
    with pytest.raises(AuthenticationError, match="invalid_grant"):
        client.finish(pending, params)


def test_a_stale_sign_in_is_refused(idp: DevIdp) -> None:
    client = idp.client()
    url, pending = client.begin()
    params = _press(idp, url, "inv.alice")

    with pytest.raises(AuthenticationError, match="longer than 10 minutes"):
        client.finish(dataclasses.replace(pending, started_at=time.time() - 601), params)


def test_a_provider_error_is_named(idp: DevIdp) -> None:
    client = idp.client()
    _, pending = client.begin()

    with pytest.raises(AuthenticationError, match=r"refused the sign-in \(access_denied: no\)"):
        client.finish(
            pending, {"error": "access_denied", "error_description": "no", "state": pending.state}
        )


def test_a_response_from_another_issuer_is_refused(idp: DevIdp) -> None:
    client = idp.client()
    url, pending = client.begin()
    params = _press(idp, url, "inv.alice")

    with pytest.raises(AuthenticationError, match="another identity provider"):
        client.finish(pending, {**params, "iss": idp.issuer(FREEDONIA)})


def test_a_provider_calling_itself_otherwise_is_a_config_error(idp: DevIdp) -> None:
    # Same server, same certificate, but the provider calls itself https://127.0.0.1:...
    client = OidcClient(
        idp.issuer().replace("127.0.0.1", "localhost"), CONSOLE, REDIRECT_URI, ca=idp.ca
    )

    with pytest.raises(ConfigError, match="set the console's issuer to exactly"):
        client.begin()


def test_a_provider_not_signed_by_the_configured_ca_is_refused(idp: DevIdp) -> None:
    client = OidcClient(idp.issuer(), CONSOLE, REDIRECT_URI)  # the system CAs only

    with pytest.raises(ConfigError, match="CERTIFICATE_VERIFY_FAILED"):
        client.begin()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"issuer": "http://idp.example/x"}, "not an https:// URL"),
        ({"algorithms": ("EdDSA", "HS256")}, "never none or HS"),
        ({"algorithms": ("none",)}, "never none or HS"),
        ({"scope": "profile"}, "must include openid"),
    ],
)
def test_unsafe_client_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"issuer": "https://idp.example/realms/x", **kwargs}
    issuer = settings.pop("issuer")

    with pytest.raises(ConfigError, match=message):
        OidcClient(issuer, CONSOLE, REDIRECT_URI, **settings)


# --- id tokens made by hand ------------------------------------------------------

NONCE = "the-nonce-of-this-sign-in"


@pytest.fixture(scope="module")
def provider_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keys(provider_key: SigningKey) -> KeySet:
    jwk = jwk_of(DevAgency(GENOVIA, provider_key, dev_issuer(GENOVIA)))
    return parse_jwks(json.dumps({"keys": [jwk]}).encode(), frozenset({"EdDSA"}))


def _claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "https://idp.example/genovia",
        "aud": CONSOLE,
        "sub": "inv.alice",
        "iat": now,
        "exp": now + 600,
        "nonce": NONCE,
        "agency": GENOVIA,
    }
    claims.update(changes)
    return claims


def _signed(key: SigningKey, claims: Mapping[str, object], kid: str) -> str:
    return jwt.encode(dict(claims), key.private_key, algorithm="EdDSA", headers={"kid": kid})


def _verify(token: str, keys: KeySet) -> dict[str, Any]:
    return verify_id_token(
        token,
        keys,
        issuer="https://idp.example/genovia",
        client_id=CONSOLE,
        nonce=NONCE,
        algorithms=("EdDSA", "ES256", "RS256"),
    )


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_good_id_token_verifies(provider_key: SigningKey, keys: KeySet) -> None:
    claims = _verify(_signed(provider_key, _claims(), provider_key.key_id), keys)

    assert claims["sub"] == "inv.alice"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "has expired"),
        ({"aud": "another-client"}, "issued to another client"),
        ({"iss": "https://evil.example/genovia"}, "from another issuer"),
        ({"nonce": "a-replayed-nonce"}, "nonce is not this sign-in's"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "in the future"),
        ({"aud": [CONSOLE, "another-client"]}, "several audiences"),
    ],
)
def test_a_wrong_id_token_is_refused(
    provider_key: SigningKey, keys: KeySet, changes: dict[str, object], message: str
) -> None:
    token = _signed(provider_key, _claims(**changes), provider_key.key_id)

    with pytest.raises(AuthenticationError, match=message):
        _verify(token, keys)


def test_an_id_token_signed_by_another_key_is_refused(
    provider_key: SigningKey, keys: KeySet
) -> None:
    forged = _signed(SigningKey.generate(), _claims(), provider_key.key_id)

    with pytest.raises(AuthenticationError, match="signature does not verify"):
        _verify(forged, keys)


def test_an_unsigned_id_token_is_refused(provider_key: SigningKey, keys: KeySet) -> None:
    unsigned = f"{_b64({'alg': 'none', 'kid': provider_key.key_id})}.{_b64(_claims())}."

    with pytest.raises(AuthenticationError, match="algorithm 'none' is not accepted"):
        _verify(unsigned, keys)


def test_an_hmac_id_token_keyed_with_the_public_key_is_refused(
    provider_key: SigningKey, keys: KeySet
) -> None:
    secret = provider_key.verifying_key.to_pem()
    header = _b64({"alg": "HS256", "kid": provider_key.key_id})
    body = _b64(_claims())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    with pytest.raises(AuthenticationError, match="algorithm 'HS256' is not accepted"):
        _verify(token, keys)


def test_an_id_token_under_a_key_the_provider_does_not_publish_is_refused(idp: DevIdp) -> None:
    client = idp.client()
    # A token the provider never issued, under a key it does not publish.
    stranger = SigningKey.generate()
    token = _signed(stranger, _claims(iss=idp.issuer(), nonce=NONCE), stranger.key_id)

    with pytest.raises(AuthenticationError, match="key the identity provider does not publish"):
        client._verified(token, NONCE)


# --- the provider refuses, and never redirects where it should not -----------------


def _authorize_url(idp: DevIdp, **changes: str) -> str:
    params = {
        "response_type": "code",
        "client_id": CONSOLE,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": "s" * 43,
        "nonce": "n" * 43,
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
        **changes,
    }
    return f"{idp.issuer()}/authorize?{urlencode(params)}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"redirect_uri": "https://evil.example/signin/callback"}, "not a loopback host"),
        ({"redirect_uri": "https://127.0.0.1.evil.example/signin/callback"}, "loopback"),
        ({"redirect_uri": "https://127.0.0.1:9/elsewhere"}, "its path is not /signin/callback"),
        ({"redirect_uri": "javascript:alert(1)//127.0.0.1/signin/callback"}, "not an http"),
        ({"client_id": "unknown-console"}, "unknown client_id"),
        ({"code_challenge_method": "plain"}, "PKCE is required"),
        ({"code_challenge": ""}, "code_challenge must be"),
        ({"response_type": "token"}, "response_type must be code"),
        ({"nonce": ""}, "state and nonce are required"),
    ],
)
def test_a_bad_authorize_request_gets_an_error_page_and_no_redirect(
    idp: DevIdp, changes: dict[str, str], message: str
) -> None:
    reply = _fetch(idp, _authorize_url(idp, **changes))

    assert reply.status == 400
    assert "Location" not in reply.headers
    assert message in reply.body
    assert "<button" not in reply.body
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


def test_the_sign_in_page_is_locked_down_and_accessible(idp: DevIdp) -> None:
    reply, page, cookie = _page(idp, _authorize_url(idp))

    csp = reply.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self' https://127.0.0.1:9",
    ):
        assert directive in csp
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["Cache-Control"] == "no-store"
    assert "SameSite=strict" in reply.headers["Set-Cookie"]
    assert "Secure" in reply.headers["Set-Cookie"]
    assert '<html lang="en">' in reply.body and "<main>" in reply.body
    assert "Development identity provider (not for production)" in reply.body
    assert "Sign in to genovia as:" in reply.body
    # One button per user of this agency, named for the person; none for other agencies.
    assert page.buttons == {"inv.alice": "Alice (investigator)", "aud.ann": "Ann (auditor)"}
    assert page.hidden["page_token"] and cookie.startswith("dev_idp_page=")


def test_a_sign_in_post_without_the_page_token_is_refused(idp: DevIdp) -> None:
    _, page, cookie = _page(idp, _authorize_url(idp))
    fields = {k: v for k, v in page.hidden.items() if k != "page_token"}

    reply = _fetch(idp, idp.base + page.action, {**fields, "subject": "inv.alice"}, cookie)

    assert reply.status == 403
    assert "Location" not in reply.headers


def test_a_cross_site_post_without_the_page_cookie_is_refused(idp: DevIdp) -> None:
    # An attacker can fetch a page (and its token) but cannot make a browser send its cookie.
    _, page, _ = _page(idp, _authorize_url(idp))

    reply = _fetch(idp, idp.base + page.action, {**page.hidden, "subject": "inv.alice"})

    assert reply.status == 403
    assert "Location" not in reply.headers
    assert "not sent from this provider" in reply.body


def test_a_sign_in_form_altered_to_another_redirect_is_refused(idp: DevIdp) -> None:
    _, page, cookie = _page(idp, _authorize_url(idp))
    for redirect in ("https://evil.example/signin/callback", "http://localhost:1/signin/callback"):
        fields = {**page.hidden, "redirect_uri": redirect, "subject": "inv.alice"}

        reply = _fetch(idp, idp.base + page.action, fields, cookie)

        assert reply.status in (400, 403)
        assert "Location" not in reply.headers


def test_a_page_token_works_once(idp: DevIdp) -> None:
    _, page, cookie = _page(idp, _authorize_url(idp))
    fields = {**page.hidden, "subject": "inv.alice"}
    assert _fetch(idp, idp.base + page.action, fields, cookie).status == 303

    again = _fetch(idp, idp.base + page.action, fields, cookie)

    assert again.status == 403
    assert "Location" not in again.headers


def test_a_user_of_another_agency_cannot_be_chosen(idp: DevIdp) -> None:
    _, page, cookie = _page(idp, _authorize_url(idp))

    reply = _fetch(idp, idp.base + page.action, {**page.hidden, "subject": "duty.olga"}, cookie)

    assert reply.status == 400
    assert "Location" not in reply.headers


def test_the_token_endpoint_answers_in_rfc_6749_errors(idp: DevIdp) -> None:
    reply = _fetch(
        idp,
        f"{idp.issuer()}/token",
        {
            "grant_type": "authorization_code",
            "code": "made-up",
            "redirect_uri": REDIRECT_URI,
            "client_id": CONSOLE,
            "code_verifier": "v" * 43,
        },
    )

    assert reply.status == 400
    assert json.loads(reply.body)["error"] == "invalid_grant"
    assert reply.headers["Cache-Control"] == "no-store"


# --- the provider's config -------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    SigningKey.generate().write(tmp_path / "g.key", tmp_path / "g.pub")
    path = tmp_path / "dev-idp.toml"
    path.write_text(
        text
        + '[[dev_idp.agency]]\nid = "genovia"\nkey = "g.key"\n'
        + '[[dev_idp.client]]\nclient_id = "c"\naudience = "liaison-gateway"\n'
        + '[[dev_idp.user]]\nagency = "genovia"\nsubject = "a"\nroles = ["investigator"]\n'
    )
    return path


def test_the_config_defaults_the_token_issuer(tmp_path: Path) -> None:
    config = load_dev_idp_config(_config(tmp_path, "[dev_idp]\n"))

    assert config.agencies["genovia"].token_issuer == dev_issuer("genovia")
    assert (config.host, config.port, config.tls) == ("127.0.0.1", 0, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[dev_idp]\nlisten = "0.0.0.0:0"\n', "only on loopback"),
        ("[dev_idp]\nport = 1\n", "unknown keys port"),
        ('[dev_idp]\ntls_cert = "x.crt"\n', "give both `tls_cert` and `tls_key`"),
        ('[dev_idp]\nlisten = "127.0.0.1"\n', "must be HOST:PORT"),
    ],
)
def test_a_bad_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dev_idp_config(_config(tmp_path, text))
