"""Who may talk to a node: only the gateway identities its config names (issue 9, item 1).

Attack: a co-member agency's node receives requests (it is in their audience)
and holds a certificate from the federation's CA. It sends a captured request
to another node within the request's validity window. The node must refuse
it, before and after the real gateway was answered, and log the attempt.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from liaison.catalog import CATALOG_V1
from liaison.cli.main import main as cli_main
from liaison.config import load_node_config
from liaison.demo.run import build_federation
from liaison.envelope import ANSWER_TYPE, open_envelope
from liaison.errors import ConfigError
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.logged import SignedRequest
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tls import CertRole, TlsFiles, certificate_identity, write_dev_pki
from liaison.wire import envelope_from_proto, signed_request_to_proto
from node.answering import close_core
from node.server import build_node, start_node_server
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.support import make_request, running_node, sign_request

NODES = ("freedonia", "ruritania", "sylvania")
SHARED_SHA256 = "ab" * 32


def _federation(root: Path) -> Path:
    with open(os.devnull, "w") as quiet:
        build_federation(root, media=60, accounts=30, tls=True, progress=quiet)
    return root


@pytest.fixture(scope="module")
def tls_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo federation with mutual TLS, as `liaison demo` writes it."""
    return _federation(tmp_path_factory.mktemp("peer-identity"))


@pytest.fixture(scope="module")
def dual_use_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, but every certificate may also act as a client, as many agency PKIs issue them.

    Then TLS lets a co-member's node certificate connect, and only the node's
    own check of who is on the line stands between it and the answers.
    """
    root = _federation(tmp_path_factory.mktemp("peer-identity-dual-use"))
    both = [CertRole.SERVER, CertRole.CLIENT]
    write_dev_pki(root / "pki", {"gateway": [CertRole.CLIENT], **dict.fromkeys(NODES, both)})
    pin = certificate_identity(root / "pki" / "gateway.crt").spki_sha256
    for node_id in NODES:
        config = root / "nodes" / node_id / "node.toml"
        text = re.sub(
            r'tls_spki_sha256 = \["[0-9a-f]+"\]', f'tls_spki_sha256 = ["{pin}"]', config.read_text()
        )
        config.write_text(text)
    return root


@contextmanager
def tls_node(root: Path, node_id: str, path: Path | None = None) -> Iterator[str]:
    config = load_node_config(path or root / "nodes" / node_id / "node.toml", CATALOG_V1)
    assert config.tls is not None
    core = build_node(config)
    server, port = start_node_server(core, "127.0.0.1:0", workers=4, tls=config.tls)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
        close_core(core)


def as_party(root: Path, name: str) -> grpc.ChannelCredentials:
    """Mutual-TLS credentials of ``name`` (gateway or a node) from the federation's PKI."""
    pki = root / "pki"
    return TlsFiles(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.pem").channel_credentials()


def captured_request(root: Path) -> SignedRequest:
    """A request the gateway sent to Freedonia and Ruritania: Freedonia holds a copy."""
    request = make_request(
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (SHARED_SHA256,)),)),
        audience=("freedonia", "ruritania"),
    )
    return sign_request(SigningKey.from_pem_file(root / "gateway" / "gateway.key"), request)


def ask(address: str, credentials: grpc.ChannelCredentials, signed: SignedRequest) -> bytes:
    with grpc.secure_channel(address, credentials) as channel:
        response = pb_node_grpc.NodeServiceStub(channel).Answer(
            signed_request_to_proto(signed), timeout=10
        )
    return bytes(response.SerializeToString())


def refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]  # a zero-argument lambda
    return caught.value


# --- the attack --------------------------------------------------------------------------


def test_co_member_node_cannot_replay_a_captured_request(
    dual_use_federation: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: Freedonia's operator holds a request addressed to it and to Ruritania
    root = dual_use_federation
    signed = captured_request(root)
    node_key = VerifyingKey.from_pem_file(root / "nodes" / "ruritania" / "node.pub")
    caplog.set_level(logging.WARNING, logger="liaison.node")

    with tls_node(root, "ruritania") as address:
        # execute: before the gateway asked, the gateway's own retry, and after it
        before = refusal(lambda: ask(address, as_party(root, "freedonia"), signed))
        answered = pb_node.AnswerResponse.FromString(
            ask(address, as_party(root, "gateway"), signed)
        )
        after = refusal(lambda: ask(address, as_party(root, "freedonia"), signed))
        retried = pb_node.AnswerResponse.FromString(ask(address, as_party(root, "gateway"), signed))

    # assert: the co-member gets no data, twice; the gateway gets its answer, and the same again
    for refused in (before, after):
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.details() == (
            "this node answers only the gateways named in its config; the certificate you "
            "connected with is not one of them"
        )
    envelope = envelope_from_proto(answered.answer)
    open_envelope(envelope, ANSWER_TYPE, {node_key.key_id: node_key})
    assert retried == answered
    refused_logs = [r for r in caplog.records if r.getMessage().startswith("refused: peer")]
    assert len(refused_logs) == 2
    for record in refused_logs:
        assert record.levelno == logging.WARNING
        assert record.peer_subject == "CN=freedonia"  # type: ignore[attr-defined]
        assert "freedonia.liaison.invalid" in record.peer_names  # type: ignore[attr-defined]
        assert record.peer.startswith("ipv4:127.0.0.1:")  # type: ignore[attr-defined]


def test_co_member_node_cannot_read_describe_or_policy(dual_use_federation: Path) -> None:
    root = dual_use_federation
    with (
        tls_node(root, "ruritania") as address,
        grpc.secure_channel(address, as_party(root, "freedonia")) as channel,
    ):
        stub = pb_node_grpc.NodeServiceStub(channel)
        describe = refusal(lambda: stub.Describe(pb_node.DescribeRequest(), timeout=5))
        policy = refusal(lambda: stub.GetPolicy(pb_node.GetPolicyRequest(), timeout=5))

    assert describe.code() == grpc.StatusCode.PERMISSION_DENIED
    assert policy.code() == grpc.StatusCode.PERMISSION_DENIED


def test_node_certificates_cannot_act_as_tls_clients(tls_federation: Path) -> None:
    # gRPC's BoringSSL checks the extended key usage: a serverAuth-only
    # certificate fails the handshake as a client ("unsupported certificate purpose").
    root = tls_federation
    signed = captured_request(root)
    with tls_node(root, "ruritania") as address:
        refused = refusal(lambda: ask(address, as_party(root, "freedonia"), signed))
        answered = ask(address, as_party(root, "gateway"), signed)

    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert answered


def test_certificates_carry_only_the_key_usage_of_their_role(tls_federation: Path) -> None:
    def usages(name: str) -> list[x509.ObjectIdentifier]:
        cert = x509.load_pem_x509_certificate((tls_federation / "pki" / f"{name}.crt").read_bytes())
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert usages("gateway") == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for node_id in NODES:
        assert usages(node_id) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_another_trusted_gateway_cannot_present_a_request_it_did_not_sign(
    tls_federation: Path, tmp_path: Path
) -> None:
    # prepare: Ruritania trusts a second gateway, which connects with its own certificate
    root = tls_federation
    pki = tmp_path / "pki"
    write_dev_pki(
        pki,
        {
            "gateway": [CertRole.CLIENT],
            "gateway2": [CertRole.CLIENT],
            "ruritania": [CertRole.SERVER],
        },
    )
    SigningKey.generate().write(tmp_path / "gateway2.key", tmp_path / "gateway2.pub")
    pins = {n: certificate_identity(pki / f"{n}.crt").spki_sha256 for n in ("gateway", "gateway2")}
    text = (root / "nodes" / "ruritania" / "node.toml").read_text()
    text = re.sub(
        r'tls_spki_sha256 = \["[0-9a-f]+"\]', f'tls_spki_sha256 = ["{pins["gateway"]}"]', text
    )
    text = text.replace("../../pki/", f"{pki}/").replace(
        "\n[tls]",
        f'\n[[trusted_gateway]]\nid = "gateway2"\npublic_key = "{tmp_path / "gateway2.pub"}"\n'
        f'tls_spki_sha256 = ["{pins["gateway2"]}"]\n\n[tls]',
    )
    config = root / "nodes" / "ruritania" / "node-two-gateways.toml"
    config.write_text(text)
    gateway2 = TlsFiles(pki / "gateway2.crt", pki / "gateway2.key", pki / "ca.pem")
    gateway = TlsFiles(pki / "gateway.crt", pki / "gateway.key", pki / "ca.pem")
    signed = captured_request(root)

    # execute: gateway2 presents a request signed by the first gateway, which then asks
    with tls_node(root, "ruritania", config) as address:
        refused = refusal(lambda: ask(address, gateway2.channel_credentials(), signed))
        answered = ask(address, gateway.channel_credentials(), signed)

    # assert
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == (
        "this request is signed by gateway 'gateway'; only that gateway may present it"
    )
    assert answered


# --- config: identities need TLS, TLS needs identities -------------------------------------


def test_tls_without_gateway_identity_is_refused(tls_federation: Path, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    source = tls_federation / "nodes" / "ruritania" / "node.toml"
    text = re.sub(r"tls_spki_sha256 = .*\n", "", source.read_text())
    config.write_text(text.replace("../../", f"{tls_federation}/"))

    with pytest.raises(ConfigError, match=r"with \[tls\] the node must know the gateway's TLS"):
        load_node_config(config, CATALOG_V1)


def test_gateway_identity_without_tls_is_refused(tls_federation: Path, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    source = (tls_federation / "nodes" / "ruritania" / "node.toml").read_text()
    text = source[: source.index("\n# Mutual TLS")].replace("../../", f"{tls_federation}/")
    config.write_text(text + "\n")

    with pytest.raises(ConfigError, match=r"need \[tls\] with client_ca"):
        load_node_config(config, CATALOG_V1)


def test_plaintext_node_warns_that_it_cannot_check_peers(
    federation_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="liaison.node")
    with running_node(federation_dir / "nodes" / "ruritania" / "node.toml"):
        pass

    (record,) = [r for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert record.node_id == "ruritania"  # type: ignore[attr-defined]


def test_init_binds_each_node_to_the_gateway_certificate(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    assert cli_main(["init", str(root), "--node", "alpha", "--node", "beta"]) == 0

    pin = certificate_identity(root / "pki" / "gateway.crt").spki_sha256
    for node_id in ("alpha", "beta"):
        config = load_node_config(root / "nodes" / node_id / "node.toml", CATALOG_V1)
        assert config.tls is not None
        (gateway,) = config.trusted_gateways
        assert gateway.tls_spki_sha256 == (pin,)
