"""Investigators' bearer tokens: every way a JWT can be wrong, through the real gateway.

Each refused token is tried twice: on ``TokenVerifier`` itself, and over gRPC against a
running gateway, where it must come back as UNAUTHENTICATED with the verifier's message.
Keys are real (the demo identity provider's Ed25519 key, and EC P-256 and RSA keys made
here), and so are signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from liaison import client
from liaison.config import Issuer, load_gateway_config
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import AUDIENCE, write_gateway_config
from liaison.errors import AuthenticationError, ConfigError
from liaison.identity.verify import MAX_TOKEN_BYTES, MAX_TOKEN_LIFETIME_S, TokenVerifier
from liaison.keys import SigningKey, key_id_of
from liaison.messages import NodeStatus, Requester, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tokens import dev_issuer
from liaison.wire import search_to_proto
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import investigator_token, running_gateway

GENOVIA = dev_issuer(INVESTIGATOR_AGENCY)
PARTNER_IDP = "https://idp.partner.invalid/genovia"
UNKNOWN_KID = "0" * 64

SEARCH = SearchInput(
    Query(
        dataset="media",
        operation=Operation.MATCH,
        predicates=(Predicate("sha256", Comparator.EQ, ("ab" * 32,)),),
    ),
    purpose="csam-investigation",
    case_ref="GEN-AUTH-1",
)

_ABSENT = object()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: object) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class Keys:
    """The demo identity provider's key, a stranger's key, and partner EC/RSA keys."""

    idp: SigningKey
    idp_public_pem: bytes
    stranger: SigningKey
    ec_private: ec.EllipticCurvePrivateKey
    rsa_private: rsa.RSAPrivateKey
    ec_public_path: Path
    rsa_public_path: Path

    @property
    def ec_kid(self) -> str:
        return key_id_of(self.ec_private.public_key())

    @property
    def rsa_kid(self) -> str:
        return key_id_of(self.rsa_private.public_key())

    def claims(self, **changes: object) -> dict[str, object]:
        """Claims the gateway accepts, with ``changes``; ``_ABSENT`` removes a claim."""
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": GENOVIA,
            "sub": "inv.alice",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "agency": INVESTIGATOR_AGENCY,
            "roles": ["investigator"],
        }
        for name, value in changes.items():
            if value is _ABSENT:
                del claims[name]
            else:
                claims[name] = value
        return claims

    def eddsa(self, claims: dict[str, object], *, key: SigningKey | None = None) -> str:
        signer = key or self.idp
        return jwt.encode(
            claims, signer.private_key, algorithm="EdDSA", headers={"kid": signer.key_id}
        )


def _write_public(path: Path, key: PublicKeyTypes) -> Path:
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@dataclass(frozen=True)
class PartnerKeys:
    folder: Path
    ec_private: ec.EllipticCurvePrivateKey
    rsa_private: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def partner_keys(tmp_path_factory: pytest.TempPathFactory) -> PartnerKeys:
    """An EC P-256 and an RSA-2048 identity provider key, made once (RSA is slow)."""
    folder = tmp_path_factory.mktemp("partner-idp")
    keys = PartnerKeys(
        folder,
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
    _write_public(folder / "es256.pub", keys.ec_private.public_key())
    _write_public(folder / "rs256.pub", keys.rsa_private.public_key())
    return keys


@pytest.fixture
def federation(module_federation: Federation) -> Federation:
    """One running federation for the module: its tests are refused, or ask and check
    only the answer they got, so none of them can change what another one sees."""
    return module_federation


@pytest.fixture
def keys(federation_dir: Path, partner_keys: PartnerKeys) -> Keys:
    """Keys of the federation in ``federation_dir``.

    Every copy of the demo federation has the same keys: also the one ``federation`` runs.
    """
    idp = federation_dir / "idp"
    return Keys(
        idp=SigningKey.from_pem_file(idp / f"{INVESTIGATOR_AGENCY}.key"),
        idp_public_pem=(idp / f"{INVESTIGATOR_AGENCY}.pub").read_bytes(),
        stranger=SigningKey.generate(),
        ec_private=partner_keys.ec_private,
        rsa_private=partner_keys.rsa_private,
        ec_public_path=partner_keys.folder / "es256.pub",
        rsa_public_path=partner_keys.folder / "rs256.pub",
    )


def genovia_issuer(root: Path) -> Issuer:
    """The issuer entry that ``write_gateway_config`` writes for the demo investigator."""
    return Issuer(
        issuer=GENOVIA,
        agencies=frozenset({INVESTIGATOR_AGENCY}),
        public_keys=(root / "idp" / f"{INVESTIGATOR_AGENCY}.pub",),
        algorithms=("EdDSA",),
    )


def partner_issuer(keys: Keys) -> Issuer:
    return Issuer(
        issuer=PARTNER_IDP,
        agencies=frozenset({INVESTIGATOR_AGENCY}),
        public_keys=(keys.ec_public_path, keys.rsa_public_path),
        algorithms=("ES256", "RS256"),
    )


@pytest.fixture
def verifier(federation_dir: Path) -> TokenVerifier:
    return TokenVerifier((genovia_issuer(federation_dir),), AUDIENCE)


# --- hand-built tokens ----------------------------------------------------------


def alg_none_token(keys: Keys) -> str:
    header = _json_segment({"alg": "none", "typ": "JWT"})
    return f"{header}.{_json_segment(keys.claims())}."


def hs256_with_public_key_token(keys: Keys) -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public key PEM, which anyone has."""
    header = _json_segment({"alg": "HS256", "typ": "JWT", "kid": keys.idp.key_id})
    signing_input = f"{header}.{_json_segment(keys.claims())}"
    mac = hmac.new(keys.idp_public_pem, signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64url(mac.digest())}"


def rs256_token(keys: Keys, **changes: object) -> str:
    return jwt.encode(
        keys.claims(**changes), keys.rsa_private, algorithm="RS256", headers={"kid": keys.rsa_kid}
    )


def es256_token(keys: Keys, *, kid: object = None, **changes: object) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(keys.claims(**changes), keys.ec_private, algorithm="ES256", headers=headers)


def unsigned_eddsa_token(keys: Keys) -> str:
    """A genuine token with its signature cut off."""
    header, payload, _ = keys.eddsa(keys.claims()).split(".")
    return f"{header}.{payload}."


# --- the refusals -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    name: str
    token: Callable[[Keys], str]
    message: Callable[[Keys], str]


def _fixed(message: str) -> Callable[[Keys], str]:
    return lambda _keys: message


def _missing(claim: str) -> Refusal:
    return Refusal(
        f"missing-{claim}",
        lambda k: k.eddsa(k.claims(**{claim: _ABSENT})),
        _fixed(f'token rejected: Token is missing the "{claim}" claim'),
    )


_NOT_ACCEPTED = (
    "token algorithm {!r} is not accepted for issuer " + repr(GENOVIA) + "; accepted: EdDSA"
)
_ROLES = "token `roles` claim must be a non-empty list of strings or a space-separated string"
_HOUR = 3600

REFUSALS = [
    Refusal(
        "garbage",
        lambda _k: "this-is-not-a-jwt",
        _fixed("token is not a well-formed JWT (Not enough segments)"),
    ),
    Refusal(
        "garbage-three-parts",
        lambda _k: "e30.e30.AAAA!",
        _fixed("token is not a well-formed JWT (Invalid crypto padding)"),
    ),
    Refusal(
        "expired",
        lambda k: k.eddsa(k.claims(iat=int(time.time()) - _HOUR, exp=int(time.time()) - 600)),
        _fixed("token has expired; get a new one"),
    ),
    Refusal(
        "issued-in-the-future",
        lambda k: k.eddsa(k.claims(iat=int(time.time()) + 600, exp=int(time.time()) + 1200)),
        _fixed("token rejected: The token is not yet valid (iat)"),
    ),
    Refusal(
        "not-before-in-the-future",
        lambda k: k.eddsa(k.claims(nbf=int(time.time()) + 600)),
        _fixed("token rejected: The token is not yet valid (nbf)"),
    ),
    Refusal(
        "wrong-audience",
        lambda k: k.eddsa(k.claims(aud="some-other-service")),
        _fixed(f"token is for another audience; this gateway accepts {AUDIENCE!r}"),
    ),
    Refusal(
        "unknown-issuer",
        lambda k: k.eddsa(k.claims(iss="https://idp.evil.invalid/")),
        _fixed(
            "token issuer 'https://idp.evil.invalid/' is not trusted by this gateway; "
            f"trusted: {GENOVIA}"
        ),
    ),
    Refusal(
        "forged-with-the-issuers-kid",
        lambda k: jwt.encode(
            k.claims(), k.stranger.private_key, algorithm="EdDSA", headers={"kid": k.idp.key_id}
        ),
        _fixed("token rejected: Signature verification failed"),
    ),
    Refusal(
        "forged-with-its-own-kid",
        lambda k: k.eddsa(k.claims(), key=k.stranger),
        lambda k: f"token key id {k.stranger.key_id!r} is not a key of issuer {GENOVIA!r}",
    ),
    Refusal(
        "signature-cut-off",
        unsigned_eddsa_token,
        _fixed("token rejected: Signature verification failed"),
    ),
    Refusal("alg-none", alg_none_token, _fixed(_NOT_ACCEPTED.format("none"))),
    Refusal(
        "hs256-keyed-with-the-public-key",
        hs256_with_public_key_token,
        _fixed(_NOT_ACCEPTED.format("HS256")),
    ),
    Refusal("rs256-for-an-eddsa-issuer", rs256_token, _fixed(_NOT_ACCEPTED.format("RS256"))),
    Refusal(
        "unknown-kid",
        lambda k: jwt.encode(
            k.claims(), k.idp.private_key, algorithm="EdDSA", headers={"kid": UNKNOWN_KID}
        ),
        _fixed(f"token key id {UNKNOWN_KID!r} is not a key of issuer {GENOVIA!r}"),
    ),
    _missing("exp"),
    _missing("iat"),
    _missing("aud"),
    _missing("sub"),
    Refusal(
        "missing-iss",
        lambda k: k.eddsa(k.claims(iss=_ABSENT)),
        _fixed(f"token issuer None is not trusted by this gateway; trusted: {GENOVIA}"),
    ),
    Refusal(
        "blank-sub",
        lambda k: k.eddsa(k.claims(sub="   ")),
        _fixed("token `sub` must name the investigator"),
    ),
    Refusal(
        "exp-not-a-number",
        lambda k: k.eddsa(k.claims(exp="tomorrow")),
        _fixed("token rejected: Expiration Time claim (exp) must be an integer."),
    ),
    Refusal(
        "missing-agency",
        lambda k: k.eddsa(k.claims(agency=_ABSENT)),
        _fixed("token has no `agency` claim"),
    ),
    Refusal("missing-roles", lambda k: k.eddsa(k.claims(roles=_ABSENT)), _fixed(_ROLES)),
    Refusal("roles-a-blank-string", lambda k: k.eddsa(k.claims(roles="   ")), _fixed(_ROLES)),
    Refusal("roles-an-object", lambda k: k.eddsa(k.claims(roles={"a": "b"})), _fixed(_ROLES)),
    Refusal("roles-empty", lambda k: k.eddsa(k.claims(roles=[])), _fixed(_ROLES)),
    Refusal("roles-not-strings", lambda k: k.eddsa(k.claims(roles=[1, None])), _fixed(_ROLES)),
    Refusal(
        "agency-the-issuer-may-not-vouch-for",
        lambda k: k.eddsa(k.claims(agency="ruritania")),
        _fixed(f"issuer {GENOVIA!r} may not vouch for agency 'ruritania'"),
    ),
    Refusal(
        "lifetime-over-12-hours",
        lambda k: k.eddsa(
            k.claims(iat=int(time.time()), exp=int(time.time()) + MAX_TOKEN_LIFETIME_S + 1)
        ),
        _fixed(
            f"token is valid for {MAX_TOKEN_LIFETIME_S + 1} s; at most {MAX_TOKEN_LIFETIME_S} s "
            "is accepted"
        ),
    ),
    Refusal(
        "oversized",
        lambda _k: "a" * (MAX_TOKEN_BYTES + 1),
        _fixed(f"token is longer than {MAX_TOKEN_BYTES} bytes"),
    ),
]


def _ids(refusals: list[Refusal]) -> list[str]:
    return [r.name for r in refusals]


@pytest.mark.parametrize("refusal", REFUSALS, ids=_ids(REFUSALS))
def test_verifier_refuses(refusal: Refusal, keys: Keys, verifier: TokenVerifier) -> None:
    token = refusal.token(keys)

    with pytest.raises(AuthenticationError, match=f"^{re.escape(refusal.message(keys))}$"):
        verifier.verify(token)


@pytest.mark.parametrize("token", [None, ""])
def test_verifier_refuses_no_token(token: str | None, verifier: TokenVerifier) -> None:
    with pytest.raises(
        AuthenticationError,
        match=re.escape(
            "no bearer token; send `authorization: Bearer <JWT>` from your agency's "
            "identity provider"
        ),
    ):
        verifier.verify(token)


# --- through the gateway --------------------------------------------------------


def gateway_refusal(
    address: str, metadata: tuple[tuple[str, str], ...], *, method: str = "Search"
) -> grpc.RpcError:
    """Call the gateway with ``metadata``; return the error it must answer with."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        request = search_to_proto(SEARCH) if method == "Search" else pb_gateway.ListNodesRequest()
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, metadata=metadata, timeout=10)
    return caught.value


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# The transport's own metadata limit gets in first for an oversized token; see below.
GATEWAY_REFUSALS = [r for r in REFUSALS if r.name != "oversized"]


@pytest.mark.parametrize("refusal", GATEWAY_REFUSALS, ids=_ids(GATEWAY_REFUSALS))
def test_gateway_refuses_with_unauthenticated(
    refusal: Refusal, keys: Keys, federation: Federation
) -> None:
    token = refusal.token(keys)

    error = gateway_refusal(federation.gateway.address, bearer(token))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == refusal.message(keys)


def test_the_client_raises_authentication_error_for_a_refused_token(
    keys: Keys, federation: Federation
) -> None:
    token = keys.eddsa(keys.claims(aud="some-other-service"))

    with pytest.raises(
        AuthenticationError,
        match=re.escape(f"token is for another audience; this gateway accepts {AUDIENCE!r}"),
    ):
        client.search(federation.gateway.address, token, SEARCH)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer"),),
        (("authorization", "Basic aW52OnB3"),),
        (("x-token", "Bearer abc"),),
    ],
    ids=["no-metadata", "empty-bearer", "scheme-only", "basic-auth", "other-header"],
)
@pytest.mark.parametrize("method", ["Search", "ListNodes"])
def test_gateway_refuses_a_call_without_a_bearer_token(
    metadata: tuple[tuple[str, str], ...], method: str, federation: Federation
) -> None:
    error = gateway_refusal(federation.gateway.address, metadata, method=method)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (
        "no bearer token; send `authorization: Bearer <JWT>` from your agency's identity provider"
    )


def test_gateway_refuses_a_list_nodes_call_with_an_expired_token(
    keys: Keys, federation: Federation
) -> None:
    now = int(time.time())
    token = keys.eddsa(keys.claims(iat=now - _HOUR, exp=now - 600))

    error = gateway_refusal(federation.gateway.address, bearer(token), method="ListNodes")

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "token has expired; get a new one"


def test_gateway_refuses_an_oversized_token_with_unauthenticated(federation: Federation) -> None:
    # The verifier's own limit must be the one an investigator meets, with its message;
    # not the gRPC transport's metadata limit (RESOURCE_EXHAUSTED, "received metadata size
    # exceeds ..."), which would also be random between its soft and hard limits.
    token = "a" * (2 * MAX_TOKEN_BYTES)

    errors = [gateway_refusal(federation.gateway.address, bearer(token)) for _ in range(3)]

    assert [(e.code(), e.details()) for e in errors] == [
        (grpc.StatusCode.UNAUTHENTICATED, f"token is longer than {MAX_TOKEN_BYTES} bytes")
    ] * 3


# --- tokens that are accepted -----------------------------------------------------


def test_a_valid_token_works_end_to_end(federation: Federation) -> None:
    token = investigator_token(federation.root)

    result = client.search(federation.gateway.address, token, SEARCH)

    assert {r.node_id: r.status for r in result.results} == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.ANSWERED,
    }


def test_a_valid_token_lists_the_nodes(federation: Federation) -> None:
    token = investigator_token(federation.root)

    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        response = stub.ListNodes(pb_gateway.ListNodesRequest(), metadata=bearer(token), timeout=10)

    assert [n.node_id for n in response.nodes] == ["freedonia", "ruritania", "sylvania"]


def test_verifier_returns_the_requester_of_a_valid_token(
    keys: Keys, verifier: TokenVerifier
) -> None:
    token = keys.eddsa(keys.claims(sub="inv.bob", roles=["investigator", "analyst"]))

    requester = verifier.verify(token)

    assert requester == Requester(
        INVESTIGATOR_AGENCY, "inv.bob", ("investigator", "analyst"), GENOVIA
    )


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(lambda now: {"iat": now - 600, "exp": now - 5}, id="expired-within-leeway"),
        pytest.param(lambda now: {"iat": now + 5}, id="issued-just-ahead-within-leeway"),
        pytest.param(
            lambda now: {"iat": now, "exp": now + MAX_TOKEN_LIFETIME_S},
            id="lifetime-exactly-12-hours",
        ),
        pytest.param(lambda now: {"aud": ["other", AUDIENCE]}, id="audience-in-a-list"),
    ],
)
def test_verifier_accepts_tokens_at_the_edges(
    changes: Callable[[int], dict[str, object]], keys: Keys, verifier: TokenVerifier
) -> None:
    claims = keys.claims(**changes(int(time.time())))

    requester = verifier.verify(keys.eddsa(claims))

    assert requester.subject == "inv.alice"


def test_roles_may_come_as_one_space_separated_string(keys: Keys, verifier: TokenVerifier) -> None:
    # OAuth `scope` style, as Auth0 and Entra ID send scopes.
    token = keys.eddsa(keys.claims(roles="investigator  analyst"))

    requester = verifier.verify(token)

    assert requester.roles == ("investigator", "analyst")


def test_a_token_without_kid_is_accepted_when_the_issuer_has_one_key(
    keys: Keys, verifier: TokenVerifier
) -> None:
    token = jwt.encode(keys.claims(), keys.idp.private_key, algorithm="EdDSA")

    requester = verifier.verify(token)

    assert requester.agency == INVESTIGATOR_AGENCY


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_es256_and_rs256_tokens_from_trusted_keys_are_accepted(
    alg: str, keys: Keys, federation_dir: Path
) -> None:
    verifier = TokenVerifier((genovia_issuer(federation_dir), partner_issuer(keys)), AUDIENCE)
    if alg == "ES256":
        token = es256_token(keys, kid=keys.ec_kid, iss=PARTNER_IDP)
    else:
        token = rs256_token(keys, iss=PARTNER_IDP)

    requester = verifier.verify(token)

    assert requester == Requester(INVESTIGATOR_AGENCY, "inv.alice", ("investigator",), PARTNER_IDP)


def test_a_token_naming_the_wrong_key_type_is_refused(keys: Keys, federation_dir: Path) -> None:
    verifier = TokenVerifier((partner_issuer(keys),), AUDIENCE)
    # Signed with the EC key, but the kid names the issuer's RSA key.
    token = es256_token(keys, kid=keys.rsa_kid, iss=PARTNER_IDP)

    with pytest.raises(
        AuthenticationError, match=re.escape("token says 'ES256' but its key is for 'RS256'")
    ):
        verifier.verify(token)


def test_a_token_without_kid_is_refused_when_the_issuer_has_several_keys(
    keys: Keys, federation_dir: Path
) -> None:
    verifier = TokenVerifier((partner_issuer(keys),), AUDIENCE)
    token = es256_token(keys, iss=PARTNER_IDP)

    with pytest.raises(
        AuthenticationError,
        match=re.escape(f"token key id None is not a key of issuer {PARTNER_IDP!r}"),
    ):
        verifier.verify(token)


def test_algorithm_confusion_fails_even_if_an_issuer_lists_hs256(
    keys: Keys, federation_dir: Path
) -> None:
    # Config refuses HS256 (see below); this is the second line of defence: the
    # algorithm must also be the one of the key the kid names.
    issuer = genovia_issuer(federation_dir)
    lax = Issuer(issuer.issuer, issuer.agencies, issuer.public_keys, ("EdDSA", "HS256"))
    verifier = TokenVerifier((lax,), AUDIENCE)
    token = hs256_with_public_key_token(keys)

    with pytest.raises(
        AuthenticationError, match=re.escape("token says 'HS256' but its key is for 'EdDSA'")
    ):
        verifier.verify(token)


def test_alg_none_fails_even_if_an_issuer_lists_it(keys: Keys, federation_dir: Path) -> None:
    issuer = genovia_issuer(federation_dir)
    lax = Issuer(issuer.issuer, issuer.agencies, issuer.public_keys, ("EdDSA", "none"))
    verifier = TokenVerifier((lax,), AUDIENCE)
    header = _json_segment({"alg": "none", "kid": keys.idp.key_id})
    token = f"{header}.{_json_segment(keys.claims())}."

    with pytest.raises(
        AuthenticationError, match=re.escape("token says 'none' but its key is for 'EdDSA'")
    ):
        verifier.verify(token)


# --- issuer configuration ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "none", "ES384"])
def test_a_gateway_config_naming_an_unsafe_algorithm_fails_to_load(
    algorithm: str, federation_dir: Path
) -> None:
    path = write_gateway_config(federation_dir, [INVESTIGATOR_AGENCY], {})
    path.write_text(path.read_text().replace('["EdDSA"]', json.dumps(["EdDSA", algorithm])))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"[[issuer]] #1: algorithms [{algorithm!r}] are not allowed; "
            "use ['EdDSA', 'ES256', 'RS256', 'PS256']"
        ),
    ):
        load_gateway_config(path)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()).public_key(), "ECPublicKey"),
        (
            # A weak key on purpose: the verifier must refuse to load it.
            lambda: rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505
            "RSAPublicKey",
        ),
    ],
    ids=["ec-p384", "rsa-1024"],
)
def test_an_unusable_identity_provider_key_fails_to_load(
    key: Callable[[], PublicKeyTypes], kind: str, tmp_path: Path
) -> None:
    path = _write_public(tmp_path / "weak.pub", key())
    issuer = Issuer(PARTNER_IDP, frozenset({"genovia"}), (path,), ("ES256", "RS256"))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"identity provider key {kind} is not usable; use Ed25519, EC P-256 or RSA of "
            "at least 2048 bits"
        ),
    ):
        TokenVerifier((issuer,), AUDIENCE)


def test_a_missing_identity_provider_key_fails_to_load(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pub"
    issuer = Issuer(PARTNER_IDP, frozenset({"genovia"}), (missing,), ("EdDSA",))

    with pytest.raises(
        ConfigError, match=re.escape(f"identity provider key {missing} does not exist")
    ):
        TokenVerifier((issuer,), AUDIENCE)


@pytest.fixture
def partner_gateway(federation: Federation, keys: Keys) -> Iterator[str]:
    """A second gateway over the running nodes whose config also trusts the partner IdP."""
    # Its own files each time: the federation is shared by the module's tests.
    tag = uuid.uuid4().hex[:8]
    path = write_gateway_config(
        federation.root,
        [INVESTIGATOR_AGENCY],
        {n: node.address for n, node in federation.nodes.items()},
        ledger=f"partners-ledger-{tag}.sqlite3",
        name=f"partners-base-{tag}.toml",
    )
    extra = "\n".join(
        [
            "",
            "[[issuer]]",
            f"issuer = {json.dumps(PARTNER_IDP)}",
            f"agencies = {json.dumps([INVESTIGATOR_AGENCY])}",
            "public_keys = " + json.dumps([str(keys.ec_public_path), str(keys.rsa_public_path)]),
            'algorithms = ["ES256", "RS256"]',
            "",
        ]
    )
    partners = path.with_name(f"partners-{tag}.toml")
    partners.write_text(path.read_text() + extra)
    with running_gateway(partners) as gateway:
        yield gateway.address


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_es256_and_rs256_tokens_work_through_a_gateway_that_trusts_them(
    alg: str, keys: Keys, partner_gateway: str
) -> None:
    if alg == "ES256":
        token = es256_token(keys, kid=keys.ec_kid, iss=PARTNER_IDP)
    else:
        token = rs256_token(keys, iss=PARTNER_IDP)

    result = client.search(partner_gateway, token, SEARCH)

    assert {r.status for r in result.results} == {NodeStatus.ANSWERED}
    assert len(result.results) == 3


def test_an_rs256_token_for_the_eddsa_issuer_fails_through_that_gateway(
    keys: Keys, partner_gateway: str
) -> None:
    token = rs256_token(keys)

    error = gateway_refusal(partner_gateway, bearer(token))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == _NOT_ACCEPTED.format("RS256")
