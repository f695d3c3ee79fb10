"""Mutual TLS between gateway and nodes: strangers cannot even connect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies, probes
from liaison.demo.federation import write_gateway_config
from liaison.demo.run import build_federation, demo_queries
from liaison.keys import SigningKey
from liaison.messages import NodeStatus
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tls import CertRole, TlsFiles, write_dev_pki
from liaison.wire import signed_request_to_proto
from node.answering import close_core
from node.server import build_node, start_node_server
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.support import investigator_token, make_request, running_gateway, sign_request


@pytest.fixture(scope="module")
def tls_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-federation")
    with open(os.devnull, "w") as quiet:
        build_federation(root, media=200, accounts=100, tls=True, progress=quiet)
    return root


@contextmanager
def tls_node(root: Path, node_id: str) -> Iterator[str]:
    config = load_node_config(root / "nodes" / node_id / "node.toml", CATALOG_V1)
    assert config.tls is not None
    core = build_node(config)
    server, port = start_node_server(core, "127.0.0.1:0", workers=4, tls=config.tls)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
        close_core(core)


def _answer(channel: grpc.Channel, root: Path) -> pb_node.AnswerResponse:
    request = make_request(
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, ("ab" * 32,)),)),
        audience=("ruritania",),
    )
    envelope = sign_request(SigningKey.from_pem_file(root / "gateway" / "gateway.key"), request)
    stub = pb_node_grpc.NodeServiceStub(channel)
    response: pb_node.AnswerResponse = stub.Answer(signed_request_to_proto(envelope), timeout=5)
    return response


def test_gateway_certificate_is_accepted(tls_federation: Path) -> None:
    files = TlsFiles(
        tls_federation / "pki" / "gateway.crt",
        tls_federation / "pki" / "gateway.key",
        tls_federation / "pki" / "ca.pem",
    )

    with (
        tls_node(tls_federation, "ruritania") as address,
        grpc.secure_channel(address, files.channel_credentials()) as channel,
    ):
        response = _answer(channel, tls_federation)

    assert response.answer.signature


def test_plaintext_client_cannot_connect(tls_federation: Path) -> None:
    with (
        tls_node(tls_federation, "ruritania") as address,
        grpc.insecure_channel(address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _answer(channel, tls_federation)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(tls_federation: Path) -> None:
    ca_only = grpc.ssl_channel_credentials(
        root_certificates=(tls_federation / "pki" / "ca.pem").read_bytes()
    )
    with (
        tls_node(tls_federation, "ruritania") as address,
        grpc.secure_channel(address, ca_only) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _answer(channel, tls_federation)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(tls_federation: Path, tmp_path: Path) -> None:
    write_dev_pki(tmp_path / "other", {"intruder": [CertRole.CLIENT]})
    intruder = TlsFiles(
        tmp_path / "other" / "intruder.crt",
        tmp_path / "other" / "intruder.key",
        tls_federation / "pki" / "ca.pem",
    )
    with (
        tls_node(tls_federation, "ruritania") as address,
        grpc.secure_channel(address, intruder.channel_credentials()) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _answer(channel, tls_federation)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_federated_search_over_mutual_tls(tls_federation: Path) -> None:
    with ExitStack() as stack:
        addresses = {
            a.agency_id: stack.enter_context(tls_node(tls_federation, a.agency_id))
            for a in demo_agencies()
        }
        write_gateway_config(tls_federation, [INVESTIGATOR_AGENCY], addresses, tls=True)
        gateway = stack.enter_context(running_gateway(tls_federation / "gateway" / "gateway.toml"))

        result = client.search(
            gateway.address, investigator_token(tls_federation), demo_queries(probes())[0].search
        )

    statuses = {r.node_id: r.status for r in result.results}
    assert statuses == dict.fromkeys(("freedonia", "ruritania", "sylvania"), NodeStatus.ANSWERED)
