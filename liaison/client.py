"""The investigator's side: one federated search, or its dry run, through a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc

from liaison.errors import (
    AuthenticationError,
    ConfigError,
    InvalidQuery,
    LedgerUnavailable,
    LiaisonError,
)
from liaison.grpc_errors import kind_name, kind_of
from liaison.messages import (
    BatchChunkResult,
    BatchHeader,
    DryRunResult,
    SearchEvent,
    SearchInput,
    SearchResult,
)
from liaison.query import Predicate
from liaison.serving import CHANNEL_OPTIONS
from liaison.wire import (
    batch_header_to_proto,
    batch_values_to_proto,
    dry_run_request_to_proto,
    dry_run_result_from_proto,
    search_event_from_proto,
    search_result_from_proto,
    search_to_proto,
)
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc


class GatewayUnavailable(LiaisonError):
    """The gateway could not be reached or did not answer in time."""


def _channel(address: str, tls_ca: Path | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=read_ca(tls_ca)),
        options=CHANNEL_OPTIONS,
    )


def read_ca(path: Path) -> bytes:
    """The PEM certificates of the CA file ``path``; ConfigError, in one line, if it is not one.

    gRPC would take any bytes and fail later, at the handshake, with a message
    that does not name the file.
    """
    if path.is_dir():
        raise ConfigError(f"CA file {path} is a folder; name the CA certificate (PEM)")
    try:
        ca = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"CA file {path} does not exist; check the path") from None
    except OSError as exc:
        raise ConfigError(f"CA file {path} cannot be read ({exc.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        what = "is empty" if not ca.strip() else "holds no PEM certificate"
        raise ConfigError(f"CA file {path} {what}; give the CA certificate (PEM) of the gateway")
    return ca


def _refused(exc: grpc.RpcError, address: str, what: str) -> LiaisonError:
    """The Liaison error for a gateway's refusal of ``what`` ("search", "dry run")."""
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidQuery(detail)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if kind_of(exc) == kind_name(LedgerUnavailable):
            # The gateway runs, but refuses to ask anyone it cannot log.
            return GatewayUnavailable(f"gateway at {address} refused the {what}: {detail}")
        return GatewayUnavailable(
            f"gateway at {address} is not answering ({code.name}); is it running?"
        )
    return LiaisonError(f"gateway refused the {what} ({code.name}): {detail}")


def replicas(address: str) -> list[str]:
    """The gateway addresses in ``address``: one HOST:PORT, or several, comma-separated."""
    found = [a.strip() for a in address.split(",") if a.strip()]
    if not found:
        raise ConfigError("name the gateway as HOST:PORT (several replicas: HOST:PORT,HOST:PORT)")
    return found


def _fail_over(exc: grpc.RpcError) -> bool:
    """Whether another replica may be asked: this one is down, or cannot log."""
    return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)


def search(
    address: str,
    token: str,
    search_input: SearchInput,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> SearchResult:
    """Run ``search_input`` through the gateway at ``address`` as the bearer of ``token``.

    With ``tls_ca``, the connection is TLS and the gateway is verified against that CA.
    ``address`` may name several replicas of one gateway (comma-separated): a
    replica that is unreachable, or refuses because it cannot log, is passed
    over for the next. A search sent again that way is a new search (a new
    query id); the first, if it got as far as the ledger, shows there as
    unfinished.
    """
    addresses = replicas(address)
    for i, one in enumerate(addresses):
        with _channel(one, tls_ca) as channel:
            stub = pb_gateway_grpc.GatewayServiceStub(channel)
            try:
                response = stub.Search(
                    search_to_proto(search_input),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=timeout_s,
                )
            except grpc.RpcError as exc:
                if _fail_over(exc) and i + 1 < len(addresses):
                    continue
                raise _refused(exc, one, "search") from exc
        return search_result_from_proto(response, search_input.query)
    raise AssertionError("unreachable: the last replica returns or raises")  # pragma: no cover


def search_stream(
    address: str,
    token: str,
    search_input: SearchInput,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> Iterator[SearchEvent]:
    """As :func:`search`, but yield each event of the search as the gateway sends it.

    First a SearchStarted, then one NodeResult per agency as its answer is in
    (and in the gateway's ledger), then a SearchSummary. Errors are those of
    :func:`search`, raised when they happen, possibly after some results. Only
    a replica that sent nothing yet is passed over for the next.
    """
    addresses = replicas(address)
    for i, one in enumerate(addresses):
        sent_any = False
        with _channel(one, tls_ca) as channel:
            stub = pb_gateway_grpc.GatewayServiceStub(channel)
            try:
                for message in stub.SearchStream(
                    pb_gateway.SearchStreamRequest(search=search_to_proto(search_input)),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=timeout_s,
                ):
                    sent_any = True
                    yield search_event_from_proto(message)
            except grpc.RpcError as exc:
                if not sent_any and _fail_over(exc) and i + 1 < len(addresses):
                    continue
                raise _refused(exc, one, "search") from exc
        return


# Values per message of a batch's stream: far inside gRPC's message size limit.
BATCH_MESSAGE_VALUES = 1000


def search_batch(
    address: str,
    token: str,
    search_input: SearchInput,
    predicate: Predicate,
    *,
    chunk_size: int = 0,
    timeout_s: float = 3600,
    tls_ca: Path | None = None,
) -> Iterator[BatchChunkResult]:
    """Ask about every value of ``predicate`` in one batch call; yield each chunk's result.

    ``search_input`` is what every chunk asks; each adds ``predicate`` with
    its own values (the gateway cuts them into chunks of ``chunk_size``, 0:
    its largest). Results come as chunks finish, not in order; each carries
    the query it answers. Errors are those of :func:`search`.
    """
    values = list(dict.fromkeys(predicate.values))
    header = BatchHeader(search_input, replace(predicate, values=()), chunk_size, len(values))

    def parts() -> Iterator[pb_gateway.SearchBatchRequest]:
        yield batch_header_to_proto(header)
        for i in range(0, len(values), BATCH_MESSAGE_VALUES):
            yield batch_values_to_proto(values[i : i + BATCH_MESSAGE_VALUES])

    addresses = replicas(address)
    for i, one in enumerate(addresses):
        sent_any = False
        with _channel(one, tls_ca) as channel:
            stub = pb_gateway_grpc.GatewayServiceStub(channel)
            try:
                for message in stub.SearchBatch(
                    parts(), metadata=(("authorization", f"Bearer {token}"),), timeout=timeout_s
                ):
                    sent_any = True
                    yield _chunk_result(message, search_input, predicate, values)
            except grpc.RpcError as exc:
                if not sent_any and _fail_over(exc) and i + 1 < len(addresses):
                    continue
                raise _refused(exc, one, "batch") from exc
        return


def _chunk_result(
    message: pb_gateway.SearchBatchResponse,
    search_input: SearchInput,
    predicate: Predicate,
    values: list[str],
) -> BatchChunkResult:
    first, count = message.first_value, message.value_count
    chunk_values = tuple(values[first : first + count])
    if len(chunk_values) != count or not count:
        raise LiaisonError(
            f"the gateway answered chunk {message.chunk} for values "
            f"{first}..{first + count} of a batch of {len(values)}"
        )
    query = replace(
        search_input.query,
        predicates=(*search_input.query.predicates, replace(predicate, values=chunk_values)),
    )
    return BatchChunkResult(
        message.chunk, first, count, search_result_from_proto(message.result, query)
    )


def dry_run(
    address: str,
    token: str,
    search_input: SearchInput,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> DryRunResult:
    """Ask the gateway at ``address`` what each node's published policy would decide.

    Nothing is sent to any node's data: the gateway decides ``search_input``
    against the policies the nodes sign and publish. Errors are those of :func:`search`.
    """
    addresses = replicas(address)
    for i, one in enumerate(addresses):
        with _channel(one, tls_ca) as channel:
            stub = pb_gateway_grpc.GatewayServiceStub(channel)
            try:
                response: pb_gateway.DryRunResponse = stub.DryRun(
                    dry_run_request_to_proto(search_input),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=timeout_s,
                )
            except grpc.RpcError as exc:
                if _fail_over(exc) and i + 1 < len(addresses):
                    continue
                raise _refused(exc, one, "dry run") from exc
        return dry_run_result_from_proto(response, search_input.query)
    raise AssertionError("unreachable: the last replica returns or raises")  # pragma: no cover
