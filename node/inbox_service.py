"""The duty officers' gRPC servicer: authenticate, convert, delegate, map errors.

It runs on a port of its own, apart from the one gateways reach: officers
are the agency's own people, who present bearer tokens from the agency's
identity provider, not gateway certificates.
"""

from __future__ import annotations

import grpc

from liaison.followup_wire import choices_from_proto, inbox_item_to_proto
from liaison.identity.verify import TokenVerifier, bearer_token
from liaison.messages import Requester
from liaison.wire import envelope_to_proto
from node.followup import FollowUpDesk
from node.service import abort
from proto.liaison.v1 import followup_pb2 as pb_followup
from proto.liaison.v1 import followup_pb2_grpc as pb_followup_grpc


class InboxServicer(pb_followup_grpc.InboxServiceServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(self, desk: FollowUpDesk, verifier: TokenVerifier) -> None:
        self.desk = desk
        self.verifier = verifier

    def _officer(self, context: grpc.ServicerContext) -> Requester:
        return self.verifier.verify(bearer_token(context.invocation_metadata()))

    def ListInbox(
        self, request: pb_followup.ListInboxRequest, context: grpc.ServicerContext
    ) -> pb_followup.ListInboxResponse:
        try:
            items = self.desk.list_items(
                self._officer(context),
                overdue_only=request.overdue_only,
                include_all=request.include_all,
            )
        except Exception as exc:
            abort(context, exc)
        return pb_followup.ListInboxResponse(items=[inbox_item_to_proto(i) for i in items])

    def GetInboxItem(
        self, request: pb_followup.GetInboxItemRequest, context: grpc.ServicerContext
    ) -> pb_followup.GetInboxItemResponse:
        try:
            item = self.desk.get_item(self._officer(context), request.id)
        except Exception as exc:
            abort(context, exc)
        return pb_followup.GetInboxItemResponse(item=inbox_item_to_proto(item))

    def Decide(
        self, request: pb_followup.DecideRequest, context: grpc.ServicerContext
    ) -> pb_followup.DecideResponse:
        try:
            officer = self._officer(context)
            item_id, choices, reason = choices_from_proto(request)
            decision = self.desk.decide(officer, item_id, choices, reason)
        except Exception as exc:
            abort(context, exc)
        return pb_followup.DecideResponse(decision=envelope_to_proto(decision))
