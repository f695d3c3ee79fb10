"""The node's gRPC servicer: convert, delegate, map errors. Nothing else.

Converting includes who is on the line: the TLS peer certificate, from
``context.auth_context()``, becomes a ``Peer`` that the core checks against
the gateway identities in the node's config before it reads anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NoReturn

import grpc

from liaison.catalog import CATALOG_VERSION
from liaison.errors import BackendError, ConfigError
from liaison.grpc_errors import ERROR_KIND_KEY, error_kind, status_for
from liaison.metrics import NodeMetrics
from liaison.tls import CertificateIdentity
from liaison.wire import delivery_from_proto, envelope_to_proto, signed_request_from_proto
from node.answering import NodeCore
from node.verify import Peer
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

log = logging.getLogger("liaison.node")


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status ``exc`` maps to (and its kind in the trailers)."""
    code, message = status_for(exc, log)
    context.set_trailing_metadata(((ERROR_KIND_KEY, error_kind(exc)),))
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


# Identities of the certificates peers presented, by their PEM: a node meets
# a few gateways, each on every call; parsing the certificate each time would
# cost more than the rest of the call's bookkeeping. Bounded all the same.
_MAX_IDENTITIES = 64
_identities: dict[bytes, CertificateIdentity] = {}


def peer_of(context: grpc.ServicerContext) -> Peer:
    """Who is on the line: the address and, over TLS, the certificate the peer proved it holds."""
    pems = context.auth_context().get("x509_pem_cert", ())
    certificate = None
    if pems:
        pem = bytes(pems[0])
        certificate = _identities.get(pem)
        if certificate is None:
            try:
                certificate = CertificateIdentity.from_pem(pem)
            except ConfigError:
                # TLS verified it, so this cannot happen; if it does, the peer is nobody.
                log.warning("peer certificate does not parse", extra={"peer": context.peer()})
            else:
                if len(_identities) >= _MAX_IDENTITIES:
                    _identities.clear()
                _identities[pem] = certificate
    return Peer(context.peer(), certificate)


class NodeServicer(pb_node_grpc.NodeServiceServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(
        self,
        core: NodeCore,
        metrics: NodeMetrics | None = None,
        on_database_error: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.metrics = metrics or NodeMetrics()
        # Told when a query failed in the database (the health probe looks at once).
        self.on_database_error = on_database_error

    def Answer(
        self, request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        started = time.perf_counter()
        try:
            peer = peer_of(context)
            # Before the request is read: the interceptor only parsed its outer message.
            self.core.check_peer(peer)
            signed = self.core.answer(signed_request_from_proto(request), peer)
        except Exception as exc:
            self.metrics.refused(error_kind(exc), time.perf_counter() - started)
            if isinstance(exc, BackendError) and self.on_database_error is not None:
                self.on_database_error()
            abort(context, exc)
        # The answer the core signed: what was decided, by which rules.
        self.metrics.answered(signed.answer, time.perf_counter() - started)
        return pb_node.AnswerResponse(answer=envelope_to_proto(signed.envelope))

    def Describe(
        self, request: pb_node.DescribeRequest, context: grpc.ServicerContext
    ) -> pb_node.DescribeResponse:
        try:
            self.core.check_peer(peer_of(context))
        except Exception as exc:
            abort(context, exc)
        return pb_node.DescribeResponse(
            node_id=self.core.node_id,
            catalog_version=CATALOG_VERSION,
            datasets=[
                pb_node.DatasetOffer(dataset=name, fields=list(m.provided_fields))
                for name, m in sorted(self.core.schema.items())
            ],
            key_id=self.core.signing_key.key_id,
        )

    def Deliver(
        self, request: pb_node.DeliverRequest, context: grpc.ServicerContext
    ) -> pb_node.DeliverResponse:
        try:
            gateways = self.core.check_peer(peer_of(context))
            ack = self.core.followups.deliver(delivery_from_proto(request), gateways)
        except Exception as exc:
            abort(context, exc)
        return pb_node.DeliverResponse(ack=envelope_to_proto(ack))

    def Collect(
        self, request: pb_node.CollectRequest, context: grpc.ServicerContext
    ) -> pb_node.CollectResponse:
        try:
            gateways = self.core.check_peer(peer_of(context))
            decisions, acks = self.core.followups.collect(list(request.followup_ids), gateways)
        except Exception as exc:
            abort(context, exc)
        return pb_node.CollectResponse(
            decisions=[envelope_to_proto(e) for e in decisions],
            acks=[envelope_to_proto(e) for e in acks],
        )

    def GetPolicy(
        self, request: pb_node.GetPolicyRequest, context: grpc.ServicerContext
    ) -> pb_node.GetPolicyResponse:
        try:
            self.core.check_peer(peer_of(context))
            envelope = self.core.policy_envelope()
        except Exception as exc:
            abort(context, exc)
        return pb_node.GetPolicyResponse(policy=envelope_to_proto(envelope))
