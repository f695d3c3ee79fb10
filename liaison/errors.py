"""One exception tree for Liaison; every message says what to do about it.

LiaisonError
├── ConfigError            a config, key or mapping file is wrong
├── CatalogError           a query or policy names what the catalog lacks
│   └── InvalidValue       a value does not parse as its field's type
├── InvalidQuery           a query is malformed (shape, missing purpose, ...)
│   └── MalformedMessage   bytes on the wire do not parse as the message expected
├── UsageError             the command line is malformed; nothing was sent
├── PolicyError            a policy document fails to load
│   └── CaseFileError      a policy's test cases file is malformed
├── AuthenticationError    an investigator's token is not acceptable
├── EnvelopeError          a signed envelope does not verify or parse
│   ├── BadSignature       wrong key, forged or tampered bytes
│   ├── RequestRejected    valid signature but stale, early, misaddressed
│   │   ├── ReplayDetected the nonce or query id was already used with other bytes
│   │   ├── UnloggedRequest no valid proof that the gateway logged the request
│   │   └── UntrustedPeer  the TLS peer is not a gateway this node trusts
│   ├── RequestInProgress  the same request is being answered; retry
│   └── AnswersNotVerified an answer the gateway showed is not what its node signed
├── PolicyDenied           the node's policy does not permit the query (or the decision)
├── NotFound               no follow-up request or inbox item of that id is yours to see
├── BackendError           the agency's database cannot be used
├── StateUnavailable       a node's own state (replay guard) cannot be written
└── LedgerError            the audit ledger cannot be written or does not verify
    ├── LedgerUnavailable  the ledger store cannot be written; nothing is asked
    ├── ProofError         an inclusion or consistency proof does not verify
    ├── CheckpointError    a signed checkpoint is malformed or mis-signed
    └── EntryError         a ledger entry is malformed or of an unknown version
"""

from __future__ import annotations


class LiaisonError(Exception):
    """Root of every error Liaison raises on purpose."""


class ConfigError(LiaisonError):
    """A config, key or mapping file is missing, malformed or inconsistent."""


class CatalogError(LiaisonError):
    """A name (dataset, field, purpose) is not in the federation catalog."""


class InvalidValue(CatalogError):
    """A value does not parse as the type its catalog field declares."""


class InvalidQuery(LiaisonError):
    """A query is malformed: wrong shape for its operation, missing purpose, ..."""


class MalformedMessage(InvalidQuery):
    """Bytes on the wire (a signed request or answer) do not parse as the message expected.

    An InvalidQuery because the same parse also refuses a query that makes no
    sense (no operation, an unknown comparator): a caller handles both alike.
    """


class UsageError(LiaisonError):
    """The command line (or a value in a file it names) is malformed; nothing was sent.

    The CLI raises it around an error from the tree (``InvalidQuery``,
    ``CatalogError``) found by a local check, so that `liaison query` exits
    with its usage status for what the user must fix in the command.
    """


class PolicyError(LiaisonError):
    """A policy document fails to load; the message names the rule and key."""


class CaseFileError(PolicyError):
    """A policy's test cases file is malformed; the message names the file and the case."""


class AuthenticationError(LiaisonError):
    """An investigator's token is missing, expired, forged or not trusted."""


class EnvelopeError(LiaisonError):
    """A signed envelope fails verification or does not parse."""


class BadSignature(EnvelopeError):
    """The signature does not verify under a trusted key."""


class RequestRejected(EnvelopeError):
    """The request verified but may not be answered (expired, misaddressed, ...)."""


class ReplayDetected(RequestRejected):
    """The request's nonce or query id was already answered for different bytes."""


class UnloggedRequest(RequestRejected):
    """The request carries no valid proof that the gateway's ledger holds it."""


class UntrustedPeer(RequestRejected):
    """The TLS peer on the line is not a gateway this node trusts (or not the signer)."""


class RequestInProgress(EnvelopeError):
    """The identical request is being answered right now; a retry will get its answer."""


class AnswersNotVerified(EnvelopeError):
    """At least one node's answer, as the gateway showed it, is not what the node signed."""


class PolicyDenied(LiaisonError):
    """The node's policy denies the query; ``rules`` names the deciding rules."""

    def __init__(self, message: str, rules: tuple[str, ...]) -> None:
        super().__init__(message)
        self.rules = rules


class NotFound(LiaisonError):
    """No follow-up request or inbox item of that id that the caller may see."""


class BackendError(LiaisonError):
    """The agency's database is unreachable or rejected the compiled query."""


class PolicyUnavailable(LiaisonError):
    """A node's published policy could not be had (unreachable, too slow, not published).

    Internal to dry runs: it becomes a result's detail, never a status code.
    """


class PolicyTimedOut(PolicyUnavailable):
    """The node did not publish its policy before the dry run's deadline."""


class StateUnavailable(LiaisonError):
    """A node cannot write its own state (replay guard); it answers nothing until it can."""


class LedgerError(LiaisonError):
    """The audit ledger cannot be written, read or verified."""


class LedgerUnavailable(LedgerError):
    """The ledger store cannot be written; queries are refused until it can."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify against the given root."""


class CheckpointError(LedgerError):
    """A signed checkpoint is malformed, mis-signed or from another log."""


class EntryError(LedgerError):
    """A ledger entry does not parse, or is of a version this release cannot read."""
