"""A duty officer's side: the node's inbox of follow-up requests and hit notices.

The CLI (`liaison node inbox`, `liaison node decide`) and the web console call
these, so neither has logic of its own about policies or signatures: the node
decides what may be released and signs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from liaison.client import channel
from liaison.envelope import Envelope
from liaison.errors import (
    AuthenticationError,
    InvalidQuery,
    LiaisonError,
    NotFound,
    PolicyDenied,
    StateUnavailable,
)
from liaison.followup_wire import choices_to_proto, inbox_item_from_proto
from liaison.followups import FieldChoice, InboxItem
from liaison.wire import envelope_from_proto
from proto.liaison.v1 import followup_pb2 as pb_followup
from proto.liaison.v1 import followup_pb2_grpc as pb_followup_grpc

TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 3.0
# As the node registers it with its health service.
SERVICE_NAME = pb_followup.DESCRIPTOR.services_by_name["InboxService"].full_name


def _refused(exc: grpc.RpcError, address: str) -> LiaisonError:
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(detail)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PolicyDenied(detail, ())
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidQuery(detail)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        why = detail or "is the node running?"
        return StateUnavailable(
            f"the node's inbox at {address} is not answering ({code.name}): {why}"
        )
    return LiaisonError(f"the node's inbox refused ({code.name}): {detail}")


def health(address: str, tls_ca: Path | None = None) -> tuple[bool, str]:
    """Whether the inbox at ``address`` serves, and its health status (or why it does not answer).

    Needs no token: the gRPC health service says only whether the inbox serves.
    """
    opened = channel(address, tls_ca)
    try:
        reply = health_pb2_grpc.HealthStub(opened).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=HEALTH_TIMEOUT_S
        )
    except grpc.RpcError as exc:
        return False, f"not answering ({exc.code().name}): is the node running?"
    finally:
        opened.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


class Inbox:
    """The inbox of one node, as one officer (``token``) sees it."""

    def __init__(self, address: str, token: str, tls_ca: Path | None = None) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel = channel(address, tls_ca)
        self._stub = pb_followup_grpc.InboxServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def items(self, *, overdue_only: bool = False, include_all: bool = False) -> list[InboxItem]:
        try:
            response = self._stub.ListInbox(
                pb_followup.ListInboxRequest(overdue_only=overdue_only, include_all=include_all),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise _refused(exc, self.address) from exc
        return [inbox_item_from_proto(i) for i in response.items]

    def item(self, item_id: str) -> InboxItem:
        try:
            response = self._stub.GetInboxItem(
                pb_followup.GetInboxItemRequest(id=item_id),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise _refused(exc, self.address) from exc
        return inbox_item_from_proto(response.item)

    def decide(self, item_id: str, choices: Sequence[FieldChoice], reason: str) -> Envelope:
        try:
            response = self._stub.Decide(
                choices_to_proto(item_id, choices, reason),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise _refused(exc, self.address) from exc
        return envelope_from_proto(response.decision)
