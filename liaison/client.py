"""The investigator's side: one federated search through a gateway."""

from __future__ import annotations

from pathlib import Path

import grpc

from liaison.errors import AuthenticationError, ConfigError, InvalidQuery, LiaisonError
from liaison.messages import SearchInput, SearchResult
from liaison.serving import CHANNEL_OPTIONS
from liaison.wire import search_result_from_proto, search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc


class GatewayUnavailable(LiaisonError):
    """The gateway could not be reached or did not answer in time."""


def _channel(address: str, tls_ca: Path | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        ca = tls_ca.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"CA file {tls_ca} does not exist") from exc
    return grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca), options=CHANNEL_OPTIONS
    )


def search(
    address: str,
    token: str,
    search_input: SearchInput,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> SearchResult:
    """Run ``search_input`` through the gateway at ``address`` as the bearer of ``token``.

    With ``tls_ca``, the connection is TLS and the gateway is verified against that CA.
    """
    with _channel(address, tls_ca) as channel:
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
