"""Bytes that do not parse get INVALID_ARGUMENT and a plain message, from node and gateway.

gRPC's own handling would answer INTERNAL ("Exception deserializing
request!") on the node's sync server and UNKNOWN naming
``google.protobuf.message.DecodeError`` on the gateway's asyncio one. These
tests send raw bytes over a generic channel to the real servers of a demo
federation on loopback: no generated stub can send them.
"""

from __future__ import annotations

import grpc
import pytest

from liaison.envelope import REQUEST_TYPE, seal
from liaison.keys import SigningKey
from liaison.wire import envelope_to_proto
from proto.liaison.v1 import node_pb2 as pb_node
from tests.conftest import Federation

# Each fails to parse as any message: a bad tag, a length past the end, a cut varint.
GARBAGE = (b"\xff\xff\xff\xff\xff\xff", b"\x0a\x40too short", b"\x08\xff\xff")
NODE_METHODS = (
    "/liaison.v1.NodeService/Answer",
    "/liaison.v1.NodeService/Describe",
    "/liaison.v1.NodeService/GetPolicy",
)
GATEWAY_METHODS = (
    "/liaison.v1.GatewayService/Search",
    "/liaison.v1.GatewayService/ListNodes",
    "/liaison.v1.GatewayService/DryRun",
)
PYTHON_NAMES = ("<class", "DecodeError", "google.protobuf", "Traceback", "Exception")


def send_raw(address: str, method: str, body: bytes) -> grpc.RpcError:
    """Send ``body`` as the request of ``method``; return the error the server answers."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=10)
    error = info.value
    assert isinstance(error, grpc.RpcError)
    return error


def assert_plain_refusal(error: grpc.RpcError, method: str) -> None:
    details = error.details() or ""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, details)
    assert not [name for name in PYTHON_NAMES if name in details], details
    assert details == (
        f"the request to {method} is not a valid protobuf message of the type that method "
        "takes; build it from the liaison.v1 .proto files"
    )


def test_node_refuses_bytes_that_do_not_parse(federation: Federation) -> None:
    # prepare
    address = next(iter(federation.nodes.values())).address

    # execute
    errors = {(m, body): send_raw(address, m, body) for m in NODE_METHODS for body in GARBAGE}

    # assert
    for (method, _), error in errors.items():
        assert_plain_refusal(error, method)


def test_gateway_refuses_bytes_that_do_not_parse(federation: Federation) -> None:
    # prepare
    address = federation.gateway.address
    ledger_size = federation.gateway.core.ledger.size

    # execute
    errors = {(m, body): send_raw(address, m, body) for m in GATEWAY_METHODS for body in GARBAGE}

    # assert
    for (method, _), error in errors.items():
        assert_plain_refusal(error, method)
    assert federation.gateway.core.ledger.size == ledger_size


def test_node_refuses_a_signed_payload_that_does_not_parse(federation: Federation) -> None:
    # prepare: a well-formed request whose envelope, signed by the trusted
    # gateway key, holds bytes that are not a QueryRequest
    node = next(iter(federation.nodes.values()))
    key = SigningKey.from_pem_file(federation.root / "gateway" / "gateway.key")
    bodies = [
        pb_node.AnswerRequest(request=envelope_to_proto(seal(key, REQUEST_TYPE, garbage)))
        for garbage in GARBAGE
    ]

    # execute
    errors = [send_raw(node.address, NODE_METHODS[0], body.SerializeToString()) for body in bodies]

    # assert
    for error in errors:
        details = error.details() or ""
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("signed payload is not a valid QueryRequest"), details
        assert not [name for name in PYTHON_NAMES if name in details], details
