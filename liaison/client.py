"""The investigator's side: one federated search through a gateway."""

from __future__ import annotations

import grpc

from liaison.errors import AuthenticationError, InvalidQuery, LiaisonError
from liaison.messages import SearchInput, SearchResult
from liaison.serving import CHANNEL_OPTIONS
from liaison.wire import search_result_from_proto, search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc


class GatewayUnavailable(LiaisonError):
    """The gateway could not be reached or did not answer in time."""


def search(
    address: str, token: str, search_input: SearchInput, timeout_s: float = 30
) -> SearchResult:
    """Run ``search_input`` through the gateway at ``address`` as the bearer of ``token``."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        try:
            response = stub.Search(
                search_to_proto(search_input),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=timeout_s,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details() or ""
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthenticationError(detail) from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidQuery(detail) from exc
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise GatewayUnavailable(
                    f"gateway at {address} is not answering ({code.name}); is it running?"
                ) from exc
            raise LiaisonError(f"gateway refused the search ({code.name}): {detail}") from exc
    return search_result_from_proto(response, search_input.query)
