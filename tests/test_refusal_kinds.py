"""Refusals name their kind in trailing metadata, so clients act on a kind, not on words.

The investigator's client tells "the gateway runs but cannot log, so it asks
no one" from "the gateway is not there" by the ``liaison-error`` trailing
metadata (``ledger-unavailable``), not by looking for a word in the message.
"""

from __future__ import annotations

import grpc
import pytest

from liaison import client
from liaison.client import GatewayUnavailable
from liaison.errors import AuthenticationError, LedgerUnavailable
from liaison.grpc_errors import ERROR_KIND_KEY, kind_name, kind_of
from liaison.wire import search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import investigator_token
from tests.test_gateway_ledger import failing_writes, ledger_file, shared_hash_search


def refusal(address: str, token: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(
                search_to_proto(shared_hash_search()),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=15,
            )
    return info.value


def test_a_gateway_that_cannot_log_names_the_kind_and_the_client_says_so(
    federation: Federation,
) -> None:
    # prepare
    token = investigator_token(federation.root)
    address = federation.gateway.address

    # execute
    with failing_writes(ledger_file(federation)):
        refused = refusal(address, token)
        with pytest.raises(GatewayUnavailable) as raised:
            client.search(address, token, shared_hash_search())

    # assert
    assert refused.code() is grpc.StatusCode.UNAVAILABLE
    assert kind_of(refused) == kind_name(LedgerUnavailable) == "ledger-unavailable"
    assert str(raised.value) == (
        f"gateway at {address} refused the search: the gateway cannot write its ledger; no "
        "query is sent until it can be written (the operator sees why in the gateway's log)"
    )


def test_every_refusal_names_its_kind(federation: Federation) -> None:
    refused = refusal(federation.gateway.address, "not-a-token")

    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
    keys = [m.key for m in refused.trailing_metadata() or ()]
    assert keys.count(ERROR_KIND_KEY) == 1
    assert kind_of(refused) == kind_name(AuthenticationError) == "authentication-error"


def test_a_gateway_that_is_not_there_reads_as_not_answering() -> None:
    expected = r"is not answering \(UNAVAILABLE\); is it running"
    with pytest.raises(GatewayUnavailable, match=expected):
        client.search("127.0.0.1:1", "token", shared_hash_search(), timeout_s=2)
