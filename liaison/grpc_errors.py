"""The error catalog: which gRPC status each Liaison error becomes.

Only Liaison's own messages, written for the caller, cross the wire. Anything
unexpected becomes INTERNAL with a reference the operator can find in the
log, never with SQL text or a stack trace.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from liaison.errors import (
    AuthenticationError,
    BackendError,
    BadSignature,
    CatalogError,
    ConfigError,
    EnvelopeError,
    InvalidQuery,
    LedgerUnavailable,
    LiaisonError,
    NotFound,
    PolicyDenied,
    ReplayDetected,
    RequestInProgress,
    RequestRejected,
    StateUnavailable,
)

_CATALOG: tuple[tuple[type[LiaisonError], grpc.StatusCode], ...] = (
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (BadSignature, grpc.StatusCode.UNAUTHENTICATED),
    (ReplayDetected, grpc.StatusCode.ALREADY_EXISTS),
    # Transient by nature: the gateway retries UNAVAILABLE and then gets the answer.
    (RequestInProgress, grpc.StatusCode.UNAVAILABLE),
    (RequestRejected, grpc.StatusCode.PERMISSION_DENIED),
    (EnvelopeError, grpc.StatusCode.INVALID_ARGUMENT),
    (CatalogError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidQuery, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (BackendError, grpc.StatusCode.UNAVAILABLE),
    # Nothing was released and nothing is charged; a later retry may succeed.
    (StateUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    # Fail closed but retryable: nothing was asked, and nothing is lost.
    (LedgerUnavailable, grpc.StatusCode.UNAVAILABLE),
)

MAX_MESSAGE_CHARS = 500
# Trailing metadata that names the kind of a refusal ("ledger-unavailable"),
# for clients that act on it: a message's words are for people and may change.
ERROR_KIND_KEY = "liaison-error"


def kind_name(cls: type[LiaisonError]) -> str:
    """A Liaison error class as a refusal kind: ``LedgerUnavailable`` -> "ledger-unavailable"."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in cls.__name__).lstrip("-")


def error_kind(exc: BaseException) -> str:
    """The kind of refusal ``exc`` becomes: its Liaison error class, or "internal"."""
    return kind_name(type(exc)) if isinstance(exc, LiaisonError) else "internal"


def kind_of(exc: grpc.RpcError) -> str:
    """The kind a Liaison server named in a refusal's trailing metadata ("" if none)."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == ERROR_KIND_KEY:
            return str(value)
    return ""


def status_for(exc: BaseException, log: logging.Logger) -> tuple[grpc.StatusCode, str]:
    """Map ``exc`` to a status code and a message that is safe to show the caller."""
    if isinstance(exc, LiaisonError):
        for cls, code in _CATALOG:
            if isinstance(exc, cls):
                return code, str(exc)[:MAX_MESSAGE_CHARS]
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error (ref %s)", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error; the operator's log has details (ref {ref})"


_log = logging.getLogger("liaison.grpc")


def malformed_request_message(method: str) -> str:
    """What a caller is told when its request bytes do not parse."""
    return (
        f"the request to {method} is not a valid protobuf message of the type that method "
        "takes; build it from the liaison.v1 .proto files"
    )


def _unary_unary(handler: Any) -> bool:
    return (
        handler is not None
        and handler.unary_unary is not None
        and handler.request_deserializer is not None
        and not handler.request_streaming
        and not handler.response_streaming
    )


# The stubs make the interceptor bases generic; at run time they are not.
if TYPE_CHECKING:
    _SyncInterceptor = grpc.ServerInterceptor[Any, Any]
    _AioInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _SyncInterceptor = grpc.ServerInterceptor
    _AioInterceptor = grpc.aio.ServerInterceptor


class MalformedRequests(_SyncInterceptor):
    """Answer INVALID_ARGUMENT, with a plain message, to request bytes that do not parse.

    gRPC itself answers INTERNAL ("Exception deserializing request!") on a
    sync server, and UNKNOWN naming the decoder's Python class on an asyncio
    one. This takes over parsing for unary methods: gRPC hands over the raw
    bytes, and the method's own deserializer runs here. Streaming methods
    (reflection) keep gRPC's handling.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if not _unary_unary(handler):
            return handler
        deserialize = handler.request_deserializer
        behavior = handler.unary_unary
        method = str(handler_call_details.method)

        def parsed(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = deserialize(raw)
            except Exception:
                _log.info("malformed request", extra={"method": method, "bytes": len(raw)})
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed_request_message(method))
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            parsed, request_deserializer=None, response_serializer=handler.response_serializer
        )


class MalformedRequestsAio(_AioInterceptor):
    """:class:`MalformedRequests` for a grpc.aio server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if not _unary_unary(handler):
            return handler
        deserialize = handler.request_deserializer
        behavior = handler.unary_unary
        method = str(handler_call_details.method)

        async def parsed(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = deserialize(raw)
            except Exception:
                _log.info("malformed request", extra={"method": method, "bytes": len(raw)})
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, malformed_request_message(method)
                )
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            parsed, request_deserializer=None, response_serializer=handler.response_serializer
        )
