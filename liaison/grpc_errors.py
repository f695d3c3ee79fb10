"""The error catalog: which gRPC status each Liaison error becomes.

Only Liaison's own messages, written for the caller, cross the wire. Anything
unexpected becomes INTERNAL with a reference the operator can find in the
log, never with SQL text or a stack trace.
"""

from __future__ import annotations

import logging
import uuid

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
    PolicyDenied,
    ReplayDetected,
    RequestInProgress,
    RequestRejected,
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
    (BackendError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    # Fail closed but retryable: nothing was asked, and nothing is lost.
    (LedgerUnavailable, grpc.StatusCode.UNAVAILABLE),
)

MAX_MESSAGE_CHARS = 500


def status_for(exc: BaseException, log: logging.Logger) -> tuple[grpc.StatusCode, str]:
    """Map ``exc`` to a status code and a message that is safe to show the caller."""
    if isinstance(exc, LiaisonError):
        for cls, code in _CATALOG:
            if isinstance(exc, cls):
                return code, str(exc)[:MAX_MESSAGE_CHARS]
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error (ref %s)", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error; the operator's log has details (ref {ref})"
