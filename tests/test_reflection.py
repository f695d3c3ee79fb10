"""Server reflection on grpc.reflection.v1 (what grpcurl and buf curl try first) and v1alpha.

Both versions are asked, over real connections, of a node (sync server) and
a gateway (grpc.aio server): which services there are, and the descriptors of
the Liaison service and of the v1 reflection service itself. The two
versions share their messages field for field; only the service name differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb
from grpc_reflection.v1alpha import reflection_pb2_grpc

from tests.operations_support import make_gateway, make_node
from tests.support import running_gateway, running_node

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
NODE_SERVICE = "liaison.v1.NodeService"
GATEWAY_SERVICE = "liaison.v1.GatewayService"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("reflection") / "federation"
    with ExitStack() as stack:
        node = stack.enter_context(running_node(make_node(root, "mirrorland")))
        gateway = stack.enter_context(
            running_gateway(make_gateway(root, {"mirrorland": node.address}))
        )
        yield {NODE_SERVICE: node.address, GATEWAY_SERVICE: gateway.address}


def ask(address: str, method: str, *requests: pb.ServerReflectionRequest) -> list[Any]:
    with grpc.insecure_channel(address) as channel:
        if method == V1ALPHA:
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        else:
            call = channel.stream_stream(
                method,
                request_serializer=pb.ServerReflectionRequest.SerializeToString,
                response_deserializer=pb.ServerReflectionResponse.FromString,
            )
        return list(call(iter(requests), timeout=10))


def file_of(response: pb.ServerReflectionResponse) -> descriptor_pb2.FileDescriptorProto:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    first = response.file_descriptor_response.file_descriptor_proto[0]
    return descriptor_pb2.FileDescriptorProto.FromString(first)


@pytest.mark.parametrize("method", [V1, V1ALPHA], ids=["v1", "v1alpha"])
@pytest.mark.parametrize("service", [NODE_SERVICE, GATEWAY_SERVICE], ids=["node", "gateway"])
def test_reflection_lists_and_describes(servers: dict[str, str], service: str, method: str) -> None:
    listed, described, itself, unknown = ask(
        servers[service],
        method,
        pb.ServerReflectionRequest(list_services=""),
        pb.ServerReflectionRequest(file_containing_symbol=service),
        pb.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        pb.ServerReflectionRequest(file_containing_symbol="liaison.v1.NoSuchService"),
    )

    assert {s.name for s in listed.list_services_response.service} == {
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    package, _, name = service.rpartition(".")
    liaison_file = file_of(described)
    assert liaison_file.package == package
    assert name in [s.name for s in liaison_file.service]
    v1 = file_of(itself)
    assert (v1.name, v1.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    (info,) = v1.service[0].method
    assert (info.input_type, info.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
