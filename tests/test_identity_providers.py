"""Tokens from real identity providers: JWKS keys by kid, claim mapping, refusal logs.

A real HTTP server on loopback serves the JWKS (and counts requests); keys are
real Ed25519, P-256 and RSA keys published as JWKs under provider-style kids;
signatures are real. Time-driven refreshes use an injected monotonic clock, so
no test waits for a schedule or depends on timing luck.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from liaison import client
from liaison.config import ClaimMapping, Issuer, load_gateway_config
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import AUDIENCE, write_gateway_config
from liaison.errors import AuthenticationError, ConfigError
from liaison.identity.jwks import MAX_JWKS_BYTES
from liaison.identity.verify import TokenVerifier
from liaison.logs import JsonFormatter
from liaison.messages import NodeStatus, Requester, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation, start_federation
from tests.support import running_gateway

KEYCLOAK = "https://sso.genovia.invalid/realms/police"
ENTRA_TENANT = "5f1c3a9e-7d2b-4e8f-9a61-0c4b2d7e8f13"
ENTRA = f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"
AUTH0 = "https://genovia-police.eu.auth0.invalid/"
# Kids as the providers spell them: Keycloak's base64url thumbprints, Entra's
# x5t-like ids, Okta's and Auth0's opaque strings. None is Liaison's key id.
KID_ED = "vJ3kQ8mX1pR7tW2yZ5aB9cD4eF6gH0iK2lM8nO1pQ3r"
KID_EC = "nOo3ZDrODXEK1jKWhXslHR_KXEg"
KID_RSA = "Hq6cYwJ8p9rH3mZkR1o7xLlV0aQ2sT5uW8yB4dF6gE1"
KID_RSA_NEXT = "rotated-2026-12-07T00:00:00Z"
KID_WEAK = "legacy-rsa-1024"
KID_ENTRA = "kWbkaa6qs8wsTnBwiiNYOhHbnAw"
ALL_ALGS = ("EdDSA", "ES256", "RS256", "PS256")
DEADLINE_S = 10.0

SEARCH = SearchInput(
    Query(
        dataset="media",
        operation=Operation.MATCH,
        predicates=(Predicate("sha256", Comparator.EQ, ("cd" * 32,)),),
    ),
    purpose="csam-investigation",
    case_ref="GEN-IDP-1",
)


# --- keys and tokens --------------------------------------------------------------


@dataclass(frozen=True)
class ProviderKeys:
    ed: ed25519.Ed25519PrivateKey
    p256: ec.EllipticCurvePrivateKey
    rsa2048: rsa.RSAPrivateKey
    rsa_next: rsa.RSAPrivateKey
    weak: rsa.RSAPrivateKey
    stranger: ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def pk() -> ProviderKeys:
    """Real keys, made once per module (RSA generation is the slow part)."""
    return ProviderKeys(
        ed=ed25519.Ed25519PrivateKey.generate(),
        p256=ec.generate_private_key(ec.SECP256R1()),
        rsa2048=rsa.generate_private_key(65537, 2048),
        rsa_next=rsa.generate_private_key(65537, 2048),
        # A weak key on purpose: the gateway must refuse to use it.
        weak=rsa.generate_private_key(65537, 1024),  # noqa: S505
        stranger=ed25519.Ed25519PrivateKey.generate(),
    )


def jwk(private: Any, kid: str, **members: object) -> dict[str, object]:
    """The public JWK of ``private`` under ``kid``, as a provider's JWKS lists it."""
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    data.update({"kid": kid, "use": "sig"}, **members)
    return data


def standard_jwks(pk: ProviderKeys) -> list[dict[str, object]]:
    return [
        jwk(pk.ed, KID_ED, alg="EdDSA"),
        jwk(pk.p256, KID_EC),
        jwk(pk.rsa2048, KID_RSA),
    ]


def claims(iss: str = KEYCLOAK, **changes: object) -> dict[str, object]:
    now = int(time.time())
    out: dict[str, object] = {
        "iss": iss,
        "sub": "f3b2c1d0-inv-alice",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "agency": INVESTIGATOR_AGENCY,
        "roles": ["investigator"],
    }
    out.update(changes)
    return out


def sign(body: dict[str, object], private: Any, alg: str, kid: str | None) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(body, private, algorithm=alg, headers=headers)


def sign_weak(body: dict[str, object], private: rsa.RSAPrivateKey, kid: str) -> str:
    """An RS256 token under a key too short to trust; pyjwt warns, as it should."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return sign(body, private, "RS256", kid)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: object) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


# --- a JWKS endpoint on loopback ---------------------------------------------------


@dataclass
class JwksServer:
    """A real HTTP server serving a JWKS; counts GETs; can fail, stall or redirect."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    location: str | None = None
    requests: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def publish(self, *keys: dict[str, object]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    @property
    def count(self) -> int:
        with self.lock:
            return self.requests


@contextmanager
def serving_jwks() -> Iterator[JwksServer]:
    """A JwksServer on a fresh loopback port, for as long as the block runs."""
    state = JwksServer()
    state.release.set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
            state.release.wait(DEADLINE_S)
            # Redirect everything but the target's own path, so a redirect
            # within the server ends at the keys instead of looping.
            if state.location is not None and urlsplit(state.location).path != self.path:
                self.send_response(302)
                self.send_header("Location", state.location)
                self.end_headers()
                return
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = (
        f"http://127.0.0.1:{server.server_address[1]}/realms/police/protocol/openid-connect/certs"
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE_S)


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with serving_jwks() as state:
        yield state


@pytest.fixture
def local_service() -> Iterator[JwksServer]:
    """Another HTTP service on the gateway's host (an admin port, say); counts what reaches it."""
    with serving_jwks() as state:
        yield state


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuer(
    *,
    iss: str = KEYCLOAK,
    url: str | None = None,
    file: Path | None = None,
    algorithms: tuple[str, ...] = ALL_ALGS,
    mapping: ClaimMapping | None = None,
    refresh_s: int = 600,
    min_refresh_s: int = 30,
    authorized_parties: frozenset[str] = frozenset(),
) -> Issuer:
    return Issuer(
        iss,
        frozenset({INVESTIGATOR_AGENCY}),
        (),
        algorithms,
        jwks_file=file,
        jwks_url=url,
        jwks_refresh_s=refresh_s,
        jwks_min_refresh_s=min_refresh_s,
        claims=mapping or ClaimMapping(),
        authorized_parties=authorized_parties,
    )


class Records(logging.Handler):
    """Every record logged on liaison.gateway, and each as the JSON line operators see."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, msg: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == msg]

    def lines(self) -> list[str]:
        return [JsonFormatter().format(r) for r in self.records]


@pytest.fixture
def gateway_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("liaison.gateway")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# --- accepted tokens ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid"),
    [("EdDSA", KID_ED), ("ES256", KID_EC), ("RS256", KID_RSA), ("PS256", KID_RSA)],
)
def test_tokens_signed_with_jwks_url_keys_are_accepted_by_the_providers_kid(
    alg: str, kid: str, pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(*standard_jwks(pk))
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE)
    private = {KID_ED: pk.ed, KID_EC: pk.p256, KID_RSA: pk.rsa2048}[kid]

    requester = asyncio.run(verifier.verify_async(sign(claims(), private, alg, kid)))

    assert requester == Requester(
        INVESTIGATOR_AGENCY, "f3b2c1d0-inv-alice", ("investigator",), KEYCLOAK
    )
    assert idp.count == 1


def test_a_jwks_file_serves_like_the_url(pk: ProviderKeys, tmp_path: Path) -> None:
    path = tmp_path / "certs.json"
    path.write_text(json.dumps({"keys": standard_jwks(pk)}))
    verifier = TokenVerifier((issuer(file=path),), AUDIENCE)

    requester = verifier.verify(sign(claims(), pk.p256, "ES256", KID_EC))

    assert requester.agency == INVESTIGATOR_AGENCY


def test_rotation_a_new_kid_is_fetched_and_a_removed_key_stops_working(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    # prepare: the provider publishes its current and its next key
    idp.publish(jwk(pk.rsa2048, KID_RSA, alg="RS256"), jwk(pk.ed, KID_ED))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE, clock=clock)
    old_token = sign(claims(), pk.rsa2048, "RS256", KID_RSA)
    assert verifier.verify(old_token).agency == INVESTIGATOR_AGENCY
    assert verifier.verify(sign(claims(), pk.ed, "EdDSA", KID_ED)).agency == INVESTIGATOR_AGENCY

    # execute: the old key is withdrawn, a new one appears; time passes beyond the minimum
    idp.publish(jwk(pk.ed, KID_ED), jwk(pk.rsa_next, KID_RSA_NEXT, alg="PS256"))
    clock.now += 31
    new = verifier.verify(sign(claims(sub="inv.bob"), pk.rsa_next, "PS256", KID_RSA_NEXT))

    # assert: the unknown kid fetched once; the withdrawn key's token, though cached, is refused
    assert new.subject == "inv.bob"
    assert idp.count == 2
    with pytest.raises(
        AuthenticationError,
        match=re.escape(f"token key id {KID_RSA!r} is not a key of issuer {KEYCLOAK!r}"),
    ):
        verifier.verify(old_token)


def test_scheduled_refresh_withdraws_a_key_even_for_a_cached_token(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(jwk(pk.rsa2048, KID_RSA), jwk(pk.ed, KID_ED))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url, refresh_s=600),), AUDIENCE, clock=clock)
    token = sign(claims(), pk.rsa2048, "RS256", KID_RSA)
    assert asyncio.run(verifier.verify_async(token)).agency == INVESTIGATOR_AGENCY

    idp.publish(jwk(pk.ed, KID_ED))
    clock.now += 599
    still = asyncio.run(verifier.verify_async(token))  # not due yet: no fetch
    fetches_before_schedule = idp.count
    clock.now += 1

    with pytest.raises(AuthenticationError, match="is not a key of issuer"):
        asyncio.run(verifier.verify_async(token))
    assert still.agency == INVESTIGATOR_AGENCY
    assert (fetches_before_schedule, idp.count) == (1, 2)


def test_an_unknown_kid_flood_fetches_at_most_once_per_minimum_interval(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(*standard_jwks(pk))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url, min_refresh_s=30),), AUDIENCE, clock=clock)
    flood = [sign(claims(), pk.stranger, "EdDSA", f"made-up-{i}") for i in range(200)]

    async def storm() -> list[BaseException | Requester]:
        return await asyncio.gather(
            *(verifier.verify_async(t) for t in flood), return_exceptions=True
        )

    at_start = idp.count
    right_after_start = asyncio.run(storm())
    for token in flood[:50]:  # the sync path obeys the same limit
        with pytest.raises(AuthenticationError):
            verifier.verify(token)
    after_start_flood = idp.count
    clock.now += 30
    one_interval_later = asyncio.run(storm())
    after_second_flood = idp.count
    clock.now += 29
    asyncio.run(storm())
    within_the_interval = idp.count

    assert (at_start, after_start_flood, after_second_flood, within_the_interval) == (1, 1, 2, 2)
    assert all(isinstance(r, AuthenticationError) for r in right_after_start + one_interval_later)


def test_concurrent_tokens_under_a_new_kid_share_one_fetch(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(jwk(pk.ed, KID_ED))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE, clock=clock)
    idp.publish(jwk(pk.ed, KID_ED), jwk(pk.p256, KID_EC))
    clock.now += 30
    tokens = [sign(claims(sub=f"inv.{i}"), pk.p256, "ES256", KID_EC) for i in range(20)]

    async def together() -> list[Requester]:
        return await asyncio.gather(*(verifier.verify_async(t) for t in tokens))

    requesters = asyncio.run(together())

    assert [r.subject for r in requesters] == [f"inv.{i}" for i in range(20)]
    assert idp.count == 2


def test_a_fetch_in_progress_does_not_block_the_event_loop(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(*standard_jwks(pk))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE, clock=clock)
    known = sign(claims(sub="inv.known"), pk.ed, "EdDSA", KID_ED)
    idp.publish(*standard_jwks(pk), jwk(pk.rsa_next, KID_RSA_NEXT))
    fresh = sign(claims(sub="inv.fresh"), pk.rsa_next, "RS256", KID_RSA_NEXT)
    clock.now += 30
    idp.release.clear()  # the provider stalls until we let it answer

    async def scenario() -> tuple[str, int, str]:
        stalled = asyncio.create_task(verifier.verify_async(fresh))
        deadline = time.monotonic() + DEADLINE_S
        while idp.count < 2:  # the loop keeps turning while the fetch waits
            assert time.monotonic() < deadline, "the JWKS fetch never reached the server"
            await asyncio.sleep(0.01)
        other = await verifier.verify_async(known)
        not_done_yet = int(stalled.done())
        idp.release.set()
        return other.subject, not_done_yet, (await stalled).subject

    assert asyncio.run(scenario()) == ("inv.known", 0, "inv.fresh")


def test_a_failing_fetch_keeps_the_last_good_keys_and_is_logged(
    pk: ProviderKeys, idp: JwksServer, gateway_log: Records
) -> None:
    idp.publish(*standard_jwks(pk))
    clock = Clock()
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE, clock=clock)
    idp.status = 503
    clock.now += 30

    with pytest.raises(AuthenticationError, match="is not a key of issuer"):
        asyncio.run(verifier.verify_async(sign(claims(), pk.ed, "EdDSA", "unknown")))
    idp.status, idp.body = 200, b"<html>maintenance</html>"
    clock.now += 600
    still = asyncio.run(verifier.verify_async(sign(claims(), pk.p256, "ES256", KID_EC)))

    assert still.agency == INVESTIGATOR_AGENCY
    assert idp.count == 3
    assert len(gateway_log.named("token refused")) == 1
    failures = gateway_log.named("jwks fetch failed; keeping the last good keys")
    assert [(r.__dict__["issuer"], r.__dict__["error"]) for r in failures] == [
        (KEYCLOAK, "HTTP 503"),
        (KEYCLOAK, "not JSON (Expecting value: line 1 column 1 (char 0))"),
    ]


# --- startup and fetch limits ------------------------------------------------------


def test_a_gateway_without_any_usable_key_refuses_to_start(idp: JwksServer) -> None:
    idp.status = 500

    with pytest.raises(
        ConfigError,
        match=re.escape(f"issuer {KEYCLOAK!r} has no usable signing key (jwks_url ")
        + ".*HTTP 500.*add `jwks_file` or `public_keys`",
    ):
        TokenVerifier((issuer(url=idp.url),), AUDIENCE)


def test_an_unreachable_url_is_tolerated_when_a_jwks_file_has_keys(
    pk: ProviderKeys, idp: JwksServer, tmp_path: Path, gateway_log: Records
) -> None:
    idp.status = 502
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED)]}))

    verifier = TokenVerifier((issuer(url=idp.url, file=path),), AUDIENCE)

    assert verifier.verify(sign(claims(), pk.ed, "EdDSA", KID_ED)).agency == INVESTIGATOR_AGENCY
    assert len(gateway_log.named("jwks fetch failed; keeping the last good keys")) == 1


def test_an_oversized_jwks_is_refused(pk: ProviderKeys, idp: JwksServer) -> None:
    padding = "x" * MAX_JWKS_BYTES
    idp.body = json.dumps({"keys": [jwk(pk.ed, KID_ED)], "padding": padding}).encode()

    with pytest.raises(ConfigError, match=f"answer is larger than {MAX_JWKS_BYTES} bytes"):
        TokenVerifier((issuer(url=idp.url),), AUDIENCE)


def test_a_stalled_provider_times_out(idp: JwksServer) -> None:
    idp.release.clear()

    with pytest.raises(ConfigError, match=r"has no usable signing key \(jwks_url .*timed out"):
        TokenVerifier((issuer(url=idp.url),), AUDIENCE, jwks_timeout_s=0.3)


def test_a_redirect_to_plain_http_elsewhere_is_not_followed(idp: JwksServer) -> None:
    idp.location = "http://idp.evil.invalid/certs"

    with pytest.raises(
        ConfigError, match=re.escape("redirected to 'http://idp.evil.invalid/certs' is not an")
    ):
        TokenVerifier((issuer(url=idp.url),), AUDIENCE)
    assert idp.count == 1


def test_a_redirect_to_another_local_port_is_not_followed_and_is_logged(
    pk: ProviderKeys,
    idp: JwksServer,
    local_service: JwksServer,
    tmp_path: Path,
    gateway_log: Records,
) -> None:
    # prepare: the provider answers 302 to another service on this host; a
    # file supplies keys so the gateway starts and the refusal is only logged
    local_service.publish(jwk(pk.ed, "planted"))
    admin = local_service.url.replace("/realms/police/protocol/openid-connect/certs", "/admin")
    idp.location = admin
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED)]}))

    # execute
    verifier = TokenVerifier((issuer(url=idp.url, file=path),), AUDIENCE)

    # assert
    assert (idp.count, local_service.count) == (1, 0)
    [failure] = gateway_log.named("jwks fetch failed; keeping the last good keys")
    assert failure.__dict__["error"] == (
        f"redirected to {admin!r}, outside the configured URL's scheme, host "
        "and port; set `jwks_url` to the URL the provider redirects to"
    )
    with pytest.raises(AuthenticationError, match="is not a key of issuer"):
        verifier.verify(sign(claims(), pk.ed, "EdDSA", "planted"))


def test_a_redirect_to_another_loopback_name_on_the_same_port_is_not_followed(
    idp: JwksServer,
) -> None:
    # The same server under another name is another origin: nothing may be fetched there.
    port = urlsplit(idp.url).port
    idp.location = f"http://localhost:{port}/elsewhere/certs"

    with pytest.raises(ConfigError, match=re.escape(f"redirected to {idp.location!r}, outside")):
        TokenVerifier((issuer(url=idp.url),), AUDIENCE)
    assert idp.count == 1


def test_a_redirect_within_the_configured_origin_is_followed(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(jwk(pk.ed, KID_ED))
    idp.location = idp.url.replace("/certs", "/certs-2026")

    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE)

    assert verifier.verify(sign(claims(), pk.ed, "EdDSA", KID_ED)).agency == INVESTIGATOR_AGENCY
    assert idp.count == 2


def test_a_loopback_jwks_url_never_goes_through_the_environment_proxy(
    pk: ProviderKeys, idp: JwksServer, local_service: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: a "proxy" that would answer with its own key if asked
    local_service.publish(jwk(pk.ed, KID_ED))
    idp.publish(jwk(pk.p256, KID_EC))
    proxy = f"http://127.0.0.1:{urlsplit(local_service.url).port}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)

    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE)

    assert verifier.verify(sign(claims(), pk.p256, "ES256", KID_EC)).agency == INVESTIGATOR_AGENCY
    assert (idp.count, local_service.count) == (1, 0)


def test_a_jwks_naming_one_kid_twice_is_refused(pk: ProviderKeys, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED), jwk(pk.stranger, KID_ED)]}))

    with pytest.raises(ConfigError, match=re.escape(f"kid {KID_ED!r} names more than one key")):
        TokenVerifier((issuer(file=path),), AUDIENCE)


# --- adversarial tokens and keys ----------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    jwks: list[dict[str, object]]
    token: str
    message: str
    reason: str


def attacks(pk: ProviderKeys) -> list[Attack]:
    std = standard_jwks(pk)
    rsa_jwk = jwk(pk.rsa2048, KID_RSA)
    now = int(time.time())
    hs_header = _segment({"alg": "HS256", "typ": "JWT", "kid": KID_RSA})
    hs_input = f"{hs_header}.{_segment(claims())}"
    # Algorithm confusion: HMAC keyed with the public JWK's bytes, which anyone can fetch.
    hs_mac = hmac.new(json.dumps(rsa_jwk).encode(), hs_input.encode(), hashlib.sha256).digest()
    return [
        Attack(
            "alg-none",
            std,
            f"{_segment({'alg': 'none', 'kid': KID_ED})}.{_segment(claims())}.",
            f"token algorithm 'none' is not accepted for issuer {KEYCLOAK!r}; "
            "accepted: ES256, EdDSA, PS256, RS256",
            "alg_not_allowed",
        ),
        Attack(
            "hs256-keyed-with-the-public-jwk",
            std,
            f"{hs_input}.{_b64url(hs_mac)}",
            f"token algorithm 'HS256' is not accepted for issuer {KEYCLOAK!r}; "
            "accepted: ES256, EdDSA, PS256, RS256",
            "alg_not_allowed",
        ),
        Attack(
            "jwk-alg-disagrees-with-its-type",
            [jwk(pk.ed, KID_ED), jwk(pk.p256, KID_EC, alg="RS256")],
            sign(claims(), pk.p256, "ES256", KID_EC),
            f"token key id {KID_EC!r} names a key of issuer {KEYCLOAK!r} that this gateway "
            "cannot use: its `alg` 'RS256' does not fit its key type (EC)",
            "unusable_key",
        ),
        Attack(
            "token-alg-differs-from-the-jwk-alg",
            [jwk(pk.rsa2048, KID_RSA, alg="PS256")],
            sign(claims(), pk.rsa2048, "RS256", KID_RSA),
            "token says 'RS256' but its key is for 'PS256'",
            "alg_key_mismatch",
        ),
        Attack(
            "rsa-1024",
            [*std, jwk(pk.weak, KID_WEAK)],
            sign_weak(claims(), pk.weak, KID_WEAK),
            f"token key id {KID_WEAK!r} names a key of issuer {KEYCLOAK!r} that this gateway "
            "cannot use: RSA key of 1024 bits; at least 2048 are needed",
            "unusable_key",
        ),
        Attack(
            "kid-names-a-key-of-another-type",
            std,
            sign(claims(), pk.p256, "ES256", KID_RSA),
            "token says 'ES256' but its key is for 'PS256' or 'RS256'",
            "alg_key_mismatch",
        ),
        Attack(
            "encryption-key",
            [*std, jwk(pk.rsa_next, "enc-1", use="enc")],
            sign(claims(), pk.rsa_next, "RS256", "enc-1"),
            f"token key id 'enc-1' names a key of issuer {KEYCLOAK!r} that this gateway cannot "
            "use: `use` is 'enc', not 'sig'",
            "unusable_key",
        ),
        Attack(
            "symmetric-jwk",
            [*std, {"kty": "oct", "kid": "hmac", "k": _b64url(b"s" * 32), "alg": "HS256"}],
            jwt.encode(claims(), b"s" * 32, algorithm="HS256", headers={"kid": "hmac"}),
            f"token algorithm 'HS256' is not accepted for issuer {KEYCLOAK!r}; "
            "accepted: ES256, EdDSA, PS256, RS256",
            "alg_not_allowed",
        ),
        Attack(
            "forged-under-the-providers-kid",
            std,
            sign(claims(), pk.stranger, "EdDSA", KID_ED),
            "token rejected: Signature verification failed",
            "bad_signature",
        ),
        Attack(
            "expired",
            std,
            sign(claims(iat=now - 3600, exp=now - 600), pk.ed, "EdDSA", KID_ED),
            "token has expired; get a new one",
            "expired",
        ),
        Attack(
            "wrong-audience",
            std,
            sign(claims(aud="account"), pk.rsa2048, "RS256", KID_RSA),
            f"token is for another audience; this gateway accepts {AUDIENCE!r}",
            "wrong_audience",
        ),
        Attack(
            "unknown-kid",
            std,
            sign(claims(), pk.ed, "EdDSA", "not-published"),
            f"token key id 'not-published' is not a key of issuer {KEYCLOAK!r}",
            "unknown_kid",
        ),
    ]


ATTACK_NAMES = [
    "alg-none",
    "hs256-keyed-with-the-public-jwk",
    "jwk-alg-disagrees-with-its-type",
    "token-alg-differs-from-the-jwk-alg",
    "rsa-1024",
    "kid-names-a-key-of-another-type",
    "encryption-key",
    "symmetric-jwk",
    "forged-under-the-providers-kid",
    "expired",
    "wrong-audience",
    "unknown-kid",
]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attacks_are_refused_and_logged_without_the_token(
    name: str, pk: ProviderKeys, idp: JwksServer, gateway_log: Records
) -> None:
    attack = next(a for a in attacks(pk) if a.name == name)
    idp.publish(*attack.jwks)
    verifier = TokenVerifier((issuer(url=idp.url),), AUDIENCE)
    header = jwt.get_unverified_header(attack.token)
    signature = attack.token.rsplit(".", 1)[1]

    with pytest.raises(AuthenticationError, match=f"^{re.escape(attack.message)}$"):
        asyncio.run(verifier.verify_async(attack.token))

    refusals = gateway_log.named("token refused")
    assert len(refusals) == 1
    fields = {k: refusals[0].__dict__[k] for k in ("issuer", "kid", "alg", "sub", "reason")}
    assert fields == {
        "issuer": KEYCLOAK,
        "kid": header.get("kid"),
        "alg": header["alg"],
        "sub": "f3b2c1d0-inv-alice",
        "reason": attack.reason,
    }
    for line in gateway_log.lines():
        assert attack.token not in line
        assert not signature or signature not in line
        # claims beyond iss, kid and sub stay out: roles, and the wrong audience
        assert "investigator" not in line and "'account'" not in line


def test_alg_none_and_hs256_fail_even_if_an_issuer_lists_them(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    # Config refuses such lists; this is the second line of defence: the token's
    # algorithm must be one its key's type allows.
    idp.publish(jwk(pk.rsa2048, KID_RSA))
    lax = issuer(url=idp.url, algorithms=("RS256", "HS256", "none"))
    verifier = TokenVerifier((lax,), AUDIENCE)
    # pyjwt itself will not HMAC with a JWK; an attacker computes it by hand.
    hs_input = f"{_segment({'alg': 'HS256', 'kid': KID_RSA})}.{_segment(claims())}"
    rsa_jwk = json.dumps(jwk(pk.rsa2048, KID_RSA)).encode()
    mac = hmac.new(rsa_jwk, hs_input.encode(), hashlib.sha256).digest()
    forged_hs = f"{hs_input}.{_b64url(mac)}"
    none = f"{_segment({'alg': 'none', 'kid': KID_RSA})}.{_segment(claims())}."

    with pytest.raises(
        AuthenticationError, match=r"^token says 'HS256' but its key is for 'RS256'$"
    ):
        verifier.verify(forged_hs)
    with pytest.raises(
        AuthenticationError, match=r"^token says 'none' but its key is for 'RS256'$"
    ):
        verifier.verify(none)


def test_private_key_material_in_a_jwks_is_never_used(pk: ProviderKeys, tmp_path: Path) -> None:
    leaked = RSAAlgorithm.to_jwk(pk.rsa2048, as_dict=True)  # the private JWK, "d" and all
    leaked.update(kid="leaked", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [leaked, jwk(pk.ed, KID_ED)]}))
    verifier = TokenVerifier((issuer(file=path),), AUDIENCE)

    with pytest.raises(
        AuthenticationError,
        match=re.escape("holds private or symmetric key material; a JWKS publishes public keys"),
    ):
        verifier.verify(sign(claims(), pk.rsa2048, "RS256", "leaked"))


def test_malformed_jwks_entries_are_skipped_with_reasons_and_never_crash(
    pk: ProviderKeys, tmp_path: Path, gateway_log: Records
) -> None:
    good = jwk(pk.ed, KID_ED)
    weird: list[object] = [
        "not-an-object",
        {"kty": "EC", "crv": "P-256"},  # no kid
        {"kid": "list-kty", "kty": ["RSA"], "n": "AQAB", "e": "AQAB"},
        {"kid": "list-crv", "kty": "EC", "crv": ["P-256"], "x": "AA", "y": "AA"},
        {**jwk(pk.p256, "list-alg"), "alg": ["ES256"]},
        {"kid": "p384", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kid": "bad-point", "kty": "EC", "crv": "P-256", "x": _b64url(b"1" * 32), "y": "AA"},
        {"kid": "bad-n", "kty": "RSA", "n": 12345, "e": "AQAB"},
        {**jwk(pk.p256, "no-verify"), "key_ops": ["encrypt"]},
        {"kid": "x" * 300, **{k: v for k, v in good.items() if k != "kid"}},
    ]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [*weird, good]}))

    verifier = TokenVerifier((issuer(file=path),), AUDIENCE)

    assert verifier.verify(sign(claims(), pk.ed, "EdDSA", KID_ED)).agency == INVESTIGATOR_AGENCY
    skipped = gateway_log.named("issuer keys skipped")[0].__dict__["unusable"]
    assert sorted(skipped) == sorted(
        [
            "#0",
            "#1",
            "list-kty",
            "list-crv",
            "list-alg",
            "p384",
            "bad-point",
            "bad-n",
            "no-verify",
            "#9",
        ]
    )
    for kid in ("list-alg", "p384", "bad-point"):
        with pytest.raises(AuthenticationError, match=re.escape(f"{skipped[kid]}")):
            verifier.verify(sign(claims(), pk.p256, "ES256", kid))


@pytest.mark.parametrize("alg", [["EdDSA"], {"alg": "EdDSA"}, None, 7])
def test_a_header_alg_that_is_not_a_string_is_refused(
    alg: object, pk: ProviderKeys, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED)]}))
    verifier = TokenVerifier((issuer(file=path),), AUDIENCE)
    genuine = sign(claims(), pk.ed, "EdDSA", KID_ED)
    token = ".".join([_segment({"alg": alg, "kid": KID_ED}), *genuine.split(".")[1:]])

    with pytest.raises(AuthenticationError, match=f"^token algorithm {re.escape(repr(alg))} is"):
        verifier.verify(token)


def test_a_rotated_jwks_file_is_reread_on_an_unknown_kid(pk: ProviderKeys, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED)]}))
    clock = Clock()
    verifier = TokenVerifier((issuer(file=path),), AUDIENCE, clock=clock)
    token = sign(claims(), pk.p256, "ES256", KID_EC)
    with pytest.raises(AuthenticationError, match="is not a key of issuer"):
        verifier.verify(token)

    path.write_text(json.dumps({"keys": [jwk(pk.ed, KID_ED), jwk(pk.p256, KID_EC)]}))
    clock.now += 30

    assert verifier.verify(token).agency == INVESTIGATOR_AGENCY


# --- claim mapping ------------------------------------------------------------------


KEYCLOAK_MAPPING = ClaimMapping(
    agency="liaison_agency",
    roles="realm_access.roles",
    subject="preferred_username",
    attributes={"clearance": "clearance", "unit": "org.unit"},
)


def keycloak_claims(**changes: object) -> dict[str, object]:
    body = claims(
        azp="liaison-cli",
        typ="Bearer",
        preferred_username="alice.inv",
        liaison_agency=INVESTIGATOR_AGENCY,
        realm_access={"roles": ["default-roles-police", "offline_access", "investigator"]},
        resource_access={"account": {"roles": ["manage-account"]}},
        clearance="secret",
        org={"unit": "victim-identification"},
        scope="openid profile email",
    )
    del body["agency"], body["roles"]
    body.update(changes)
    return body


def test_keycloak_shaped_claims_map_by_config(pk: ProviderKeys, idp: JwksServer) -> None:
    idp.publish(*standard_jwks(pk))
    kc = issuer(
        url=idp.url, mapping=KEYCLOAK_MAPPING, authorized_parties=frozenset({"liaison-cli"})
    )
    verifier = TokenVerifier((kc,), AUDIENCE)

    requester = verifier.verify(sign(keycloak_claims(), pk.rsa2048, "RS256", KID_RSA))

    assert requester == Requester(
        INVESTIGATOR_AGENCY,
        "alice.inv",
        ("default-roles-police", "offline_access", "investigator"),
        KEYCLOAK,
        {"clearance": "secret", "unit": "victim-identification"},
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"azp": "account-console"}, "token was issued to client 'account-console', not to one"),
        ({"realm_access": {"roles": []}}, "token `realm_access.roles` claim must be a non-empty"),
        ({"realm_access": "investigator"}, "token `realm_access.roles` claim must be a non-empty"),
        ({"liaison_agency": "ruritania"}, f"issuer {KEYCLOAK!r} may not vouch for agency"),
        ({"liaison_agency": None}, "token has no `liaison_agency` claim"),
        ({"clearance": ["secret", "top-secret"]}, "token attribute 'clearance' must be printable"),
        ({"preferred_username": " "}, "token `preferred_username` must name the investigator"),
    ],
    ids=[
        "other-client",
        "no-roles",
        "roles-not-nested",
        "other-agency",
        "no-agency",
        "multivalued-attribute",
        "blank-username",
    ],
)
def test_keycloak_tokens_that_do_not_fit_the_mapping_are_refused(
    changes: dict[str, object], message: str, pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(*standard_jwks(pk))
    kc = issuer(
        url=idp.url, mapping=KEYCLOAK_MAPPING, authorized_parties=frozenset({"liaison-cli"})
    )
    verifier = TokenVerifier((kc,), AUDIENCE)

    with pytest.raises(AuthenticationError, match=f"^{re.escape(message)}"):
        verifier.verify(sign(keycloak_claims(**changes), pk.rsa2048, "RS256", KID_RSA))


def entra_claims(**changes: object) -> dict[str, object]:
    body = claims(
        iss=ENTRA,
        tid=ENTRA_TENANT,
        oid="0a1b2c3d-0000-4000-8000-00000000abcd",
        azp="0c9d8e7f-cli-app",
        ver="2.0",
        roles=["Liaison.Investigator", "investigator"],
        scp="Search.Read ListNodes.Read",
        extn_clearance="secret",
    )
    del body["agency"]
    body.update(changes)
    return body


def test_entra_shaped_claims_with_a_fixed_agency(pk: ProviderKeys, idp: JwksServer) -> None:
    idp.publish(jwk(pk.rsa2048, KID_ENTRA, x5t=KID_ENTRA))  # Entra: RSA keys, kid == x5t
    mapping = ClaimMapping(
        agency_value=INVESTIGATOR_AGENCY, subject="oid", attributes={"clearance": "extn_clearance"}
    )
    verifier = TokenVerifier((issuer(iss=ENTRA, url=idp.url, mapping=mapping),), AUDIENCE)

    requester = verifier.verify(sign(entra_claims(), pk.rsa2048, "RS256", KID_ENTRA))

    assert requester == Requester(
        INVESTIGATOR_AGENCY,
        "0a1b2c3d-0000-4000-8000-00000000abcd",
        ("Liaison.Investigator", "investigator"),
        ENTRA,
        {"clearance": "secret"},
    )


def test_entra_scopes_as_roles_come_space_separated(pk: ProviderKeys, idp: JwksServer) -> None:
    idp.publish(jwk(pk.rsa2048, KID_RSA))
    mapping = ClaimMapping(agency_value=INVESTIGATOR_AGENCY, roles="scp")
    verifier = TokenVerifier((issuer(iss=ENTRA, url=idp.url, mapping=mapping),), AUDIENCE)

    requester = verifier.verify(sign(entra_claims(), pk.rsa2048, "RS256", KID_RSA))

    assert requester.roles == ("Search.Read", "ListNodes.Read")


def test_auth0_namespaced_claims_are_read_by_their_full_name(
    pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(jwk(pk.rsa2048, KID_RSA))
    ns = "https://liaison.genovia.invalid/"
    mapping = ClaimMapping(
        agency=f"{ns}agency", roles="permissions", attributes={"clearance": f"{ns}clearance"}
    )
    verifier = TokenVerifier((issuer(iss=AUTH0, url=idp.url, mapping=mapping),), AUDIENCE)
    body = claims(
        iss=AUTH0,
        sub="auth0|64f0c2",
        permissions=["investigator"],
        **{f"{ns}agency": INVESTIGATOR_AGENCY, f"{ns}clearance": "secret"},
    )
    del body["agency"], body["roles"]

    requester = verifier.verify(sign(body, pk.rsa2048, "RS256", KID_RSA))

    assert (requester.agency, requester.roles, dict(requester.attributes)) == (
        INVESTIGATOR_AGENCY,
        ("investigator",),
        {"clearance": "secret"},
    )


# --- configuration ------------------------------------------------------------------


def _gateway_toml(federation_dir: Path, issuer_block: str) -> Path:
    path = write_gateway_config(federation_dir, [INVESTIGATOR_AGENCY], {}, name="idp.toml")
    path.write_text(path.read_text() + "\n" + issuer_block)
    return path


def test_the_issuer_table_loads_jwks_sources_and_the_claim_mapping(federation_dir: Path) -> None:
    path = _gateway_toml(
        federation_dir,
        f"""
[[issuer]]
issuer = "{KEYCLOAK}"
agencies = ["genovia"]
algorithms = ["RS256", "ES256"]
jwks_url = "https://sso.genovia.invalid/realms/police/protocol/openid-connect/certs"
jwks_file = "keycloak-jwks.json"
jwks_refresh_s = 300
jwks_min_refresh_s = 15
authorized_parties = ["liaison-cli"]

[issuer.claims]
agency = "liaison_agency"
roles = "realm_access.roles"
subject = "preferred_username"
attributes = {{ clearance = "clearance", unit = "org.unit" }}
""",
    )

    loaded = load_gateway_config(path).issuers[-1]

    assert loaded == Issuer(
        KEYCLOAK,
        frozenset({"genovia"}),
        (),
        ("RS256", "ES256"),
        jwks_file=path.parent / "keycloak-jwks.json",
        jwks_url="https://sso.genovia.invalid/realms/police/protocol/openid-connect/certs",
        jwks_refresh_s=300,
        jwks_min_refresh_s=15,
        claims=KEYCLOAK_MAPPING,
        authorized_parties=frozenset({"liaison-cli"}),
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            'jwks_url = "http://sso.genovia.invalid/certs"',
            "`jwks_url` 'http://sso.genovia.invalid/certs' is not an https:// URL",
        ),
        (
            'jwks_url = "https://user:pw@sso.genovia.invalid/certs"',
            "credentials do not belong in a JWKS URL",
        ),
        ("", "name the issuer's signing keys with `jwks_url`"),
        (
            'jwks_file = "j.json"\n[issuer.claims]\nagency_value = "ruritania"',
            "agency_value 'ruritania' is not one of the issuer's agencies ['genovia']",
        ),
        (
            'jwks_file = "j.json"\n[issuer.claims]\nagency = "a"\nagency_value = "genovia"',
            "set `agency` (a claim) or `agency_value`, not both",
        ),
        (
            'jwks_file = "j.json"\n[issuer.claims]\nattributes = { clearance = 3 }',
            "`attributes` must name one claim holding an object",
        ),
        (
            'jwks_file = "j.json"\njwks_refresh_s = 600\njwks_min_refresh_s = 601',
            "`jwks_min_refresh_s` must be a whole number in 1..600",
        ),
        ('jwks_file = "j.json"\n[issuer.claims]\ngroups = "g"', "unknown keys groups"),
        (
            f'jwks_file = "j.json"\n\n[[issuer]]\nissuer = "{KEYCLOAK}"\nagencies = ["x"]\n'
            'algorithms = ["RS256"]\njwks_file = "k.json"',
            f"issuers [{KEYCLOAK!r}] appear in more than one [[issuer]]; merge them",
        ),
    ],
    ids=[
        "plain-http",
        "credentials",
        "no-keys",
        "agency-value-elsewhere",
        "agency-twice",
        "attribute-not-a-claim-name",
        "min-over-refresh",
        "unknown-claim-key",
        "issuer-twice",
    ],
)
def test_issuer_tables_that_are_wrong_fail_to_load(
    block: str, message: str, federation_dir: Path
) -> None:
    path = _gateway_toml(
        federation_dir,
        f'[[issuer]]\nissuer = "{KEYCLOAK}"\nagencies = ["genovia"]\nalgorithms = ["RS256"]\n'
        + block
        + "\n",
    )

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_gateway_config(path)


# --- through a real gateway ---------------------------------------------------------


@pytest.fixture(scope="module")
def federation(
    federation_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """The demo nodes (and gateway), started once for this module's gateways.

    It overrides conftest's fixture of one federation per test: each test here
    starts a gateway of its own over these nodes, with a ledger of its own, and
    asks one hash match, which no node's rate limit comes near.
    """
    root = tmp_path_factory.mktemp("identity-providers") / "federation"
    shutil.copytree(federation_template, root)
    with ExitStack() as stack:
        yield start_federation(root, stack)


@pytest.fixture
def keycloak_gateway(
    federation: Federation, pk: ProviderKeys, gateway_log: Records
) -> Iterator[str]:
    """A gateway over the running nodes whose config trusts a Keycloak realm by jwks_file."""
    root = federation.root
    tag = uuid.uuid4().hex[:8]  # a ledger has one writer: each gateway here has its own
    (root / "gateway" / "keycloak-jwks.json").write_text(
        json.dumps({"keys": [*standard_jwks(pk), jwk(pk.rsa_next, "enc-1", use="enc")]})
    )
    path = write_gateway_config(
        root,
        [INVESTIGATOR_AGENCY],
        {n: node.address for n, node in federation.nodes.items()},
        ledger=f"keycloak-ledger-{tag}.sqlite3",
        name=f"keycloak-base-{tag}.toml",
    )
    keycloak = path.with_name(f"keycloak-{tag}.toml")
    keycloak.write_text(
        path.read_text()
        + f"""
[[issuer]]
issuer = "{KEYCLOAK}"
agencies = ["{INVESTIGATOR_AGENCY}"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_file = "keycloak-jwks.json"
authorized_parties = ["liaison-cli"]

[issuer.claims]
agency = "liaison_agency"
roles = "realm_access.roles"
subject = "preferred_username"
attributes = {{ clearance = "clearance", unit = "org.unit" }}
"""
    )
    with running_gateway(keycloak) as gateway:
        yield gateway.address


@pytest.mark.parametrize(("alg", "kid"), [("RS256", KID_RSA), ("ES256", KID_EC)])
def test_a_keycloak_token_searches_through_a_real_gateway(
    alg: str, kid: str, pk: ProviderKeys, keycloak_gateway: str
) -> None:
    private = {KID_RSA: pk.rsa2048, KID_EC: pk.p256}[kid]
    token = sign(keycloak_claims(), private, alg, kid)

    result = client.search(keycloak_gateway, token, SEARCH)

    assert {r.node_id: r.status for r in result.results} == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.ANSWERED,
    }


def test_a_keycloak_token_without_the_investigator_role_is_denied_by_the_nodes(
    pk: ProviderKeys, keycloak_gateway: str
) -> None:
    token = sign(
        keycloak_claims(realm_access={"roles": ["default-roles-police", "offline_access"]}),
        pk.rsa2048,
        "RS256",
        KID_RSA,
    )

    result = client.search(keycloak_gateway, token, SEARCH)

    assert {r.status for r in result.results} == {NodeStatus.DENIED}


def test_a_gateway_fetching_a_jwks_url_serves_a_search_over_grpc(
    federation: Federation, pk: ProviderKeys, idp: JwksServer
) -> None:
    idp.publish(jwk(pk.ed, KID_ED), jwk(pk.p256, KID_EC))
    path = write_gateway_config(
        federation.root,
        [INVESTIGATOR_AGENCY],
        {n: node.address for n, node in federation.nodes.items()},
        ledger=f"okta-ledger-{uuid.uuid4().hex[:8]}.sqlite3",
        name="okta-base.toml",
    )
    okta = path.with_name("okta.toml")
    okta.write_text(
        path.read_text()
        + f"""
[[issuer]]
issuer = "https://genovia.okta.invalid/oauth2/aus1a2b3c4"
agencies = ["{INVESTIGATOR_AGENCY}"]
algorithms = ["EdDSA", "ES256"]
jwks_url = "{idp.url}"

[issuer.claims]
roles = "groups"
"""
    )
    body = claims(iss="https://genovia.okta.invalid/oauth2/aus1a2b3c4", groups=["investigator"])
    del body["roles"]

    with running_gateway(okta) as gateway:
        result = client.search(gateway.address, sign(body, pk.p256, "ES256", KID_EC), SEARCH)

    assert {r.status for r in result.results} == {NodeStatus.ANSWERED}
    assert len(result.results) == 3
    assert idp.count == 1


def test_a_token_under_the_realms_encryption_key_is_refused_over_grpc_and_logged(
    pk: ProviderKeys, keycloak_gateway: str, gateway_log: Records
) -> None:
    token = sign(keycloak_claims(), pk.rsa_next, "RS256", "enc-1")

    with grpc.insecure_channel(keycloak_gateway) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(
                search_to_proto(SEARCH),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == (
        f"token key id 'enc-1' names a key of issuer {KEYCLOAK!r} that this gateway cannot "
        "use: `use` is 'enc', not 'sig'"
    )
    refusals = gateway_log.named("token refused")
    assert [(r.__dict__["kid"], r.__dict__["reason"]) for r in refusals] == [
        ("enc-1", "unusable_key")
    ]
    assert all(token not in line for line in gateway_log.lines())
