"""The investigator's side: one federated search, or its dry run, through a gateway.

And follow-up requests: file one with the agency whose answer named the
records, list yours, and read one with the holding agency's signed decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import grpc

from liaison.errors import (
    AuthenticationError,
    ConfigError,
    InvalidQuery,
    LedgerUnavailable,
    LiaisonError,
    NotFound,
)
from liaison.followup_wire import filing_to_proto, view_from_proto
from liaison.followups import FollowUpFiling, FollowUpView
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
    batch_chunk_from_proto,
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

M = TypeVar("M")


class GatewayUnavailable(LiaisonError):
    """The gateway could not be reached or did not answer in time."""


def channel(address: str, tls_ca: Path | None) -> grpc.Channel:
    """A channel to ``address``: TLS verified against ``tls_ca``, or plaintext without one."""
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
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
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


Metadata = tuple[tuple[str, str], ...]
Call = Callable[[pb_gateway_grpc.GatewayServiceStub, Metadata], Iterable[M]]


def _through_replicas(
    address: str, token: str, tls_ca: Path | None, what: str, call: Call[M]
) -> Iterator[M]:
    """The messages ``call`` gets from the first replica in ``address`` that takes it.

    A replica that is unreachable, or refuses because it cannot log, is passed
    over for the next, as long as it sent nothing; ``what`` ("search", "batch")
    names the call in errors.
    """
    addresses = replicas(address)
    metadata = (("authorization", f"Bearer {token}"),)
    for i, one in enumerate(addresses):
        sent_any = False
        with channel(one, tls_ca) as opened:
            try:
                for message in call(pb_gateway_grpc.GatewayServiceStub(opened), metadata):
                    sent_any = True
                    yield message
            except grpc.RpcError as exc:
                if not sent_any and _fail_over(exc) and i + 1 < len(addresses):
                    continue
                raise _refused(exc, one, what) from exc
        return


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
    request = search_to_proto(search_input)
    (response,) = _through_replicas(
        address,
        token,
        tls_ca,
        "search",
        lambda stub, metadata: (stub.Search(request, metadata=metadata, timeout=timeout_s),),
    )
    return search_result_from_proto(response, search_input.query)


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
    request = pb_gateway.SearchStreamRequest(search=search_to_proto(search_input))
    for message in _through_replicas(
        address,
        token,
        tls_ca,
        "search",
        lambda stub, metadata: stub.SearchStream(request, metadata=metadata, timeout=timeout_s),
    ):
        yield search_event_from_proto(message)


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

    for message in _through_replicas(
        address,
        token,
        tls_ca,
        "batch",
        # A stream of its own for each replica tried.
        lambda stub, metadata: stub.SearchBatch(parts(), metadata=metadata, timeout=timeout_s),
    ):
        yield batch_chunk_from_proto(message, search_input, predicate, values)


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
    request = dry_run_request_to_proto(search_input)
    (response,) = _through_replicas(
        address,
        token,
        tls_ca,
        "dry run",
        lambda stub, metadata: (stub.DryRun(request, metadata=metadata, timeout=timeout_s),),
    )
    return dry_run_result_from_proto(response, search_input.query)


def file_followup(
    address: str,
    token: str,
    filing: FollowUpFiling,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> FollowUpView:
    """File ``filing`` through the gateway: signed, logged, and delivered before it returns.

    The view says what the holding node said on delivery ("pending" once it
    took the request in, "refused" or "not delivered" otherwise), with the
    node's signed acknowledgement. A replica passed over files nothing; the
    one that takes it gives the request a new id. Errors are those of
    :func:`search`.
    """
    request = filing_to_proto(filing)
    (response,) = _through_replicas(
        address,
        token,
        tls_ca,
        "follow-up request",
        lambda stub, metadata: (stub.FileFollowUp(request, metadata=metadata, timeout=timeout_s),),
    )
    return view_from_proto(response.followup)


def list_followups(
    address: str,
    token: str,
    *,
    overdue_only: bool = False,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> list[FollowUpView]:
    """Your follow-up requests, newest first (only those past their answer-by time and
    still pending, with ``overdue_only``); decisions made since are collected first."""
    request = pb_gateway.ListFollowUpsRequest(overdue_only=overdue_only)
    (response,) = _through_replicas(
        address,
        token,
        tls_ca,
        "follow-up listing",
        lambda stub, metadata: (stub.ListFollowUps(request, metadata=metadata, timeout=timeout_s),),
    )
    return [view_from_proto(m) for m in response.followups]


def get_followup(
    address: str,
    token: str,
    followup_id: str,
    timeout_s: float = 30,
    tls_ca: Path | None = None,
) -> FollowUpView:
    """Your follow-up request ``followup_id``, with the holding agency's signed decision
    once there is one. NotFound when there is no such request of yours."""
    request = pb_gateway.GetFollowUpRequest(followup_id=followup_id)
    (response,) = _through_replicas(
        address,
        token,
        tls_ca,
        "follow-up",
        lambda stub, metadata: (stub.GetFollowUp(request, metadata=metadata, timeout=timeout_s),),
    )
    return view_from_proto(response.followup)
