"""Plain domain types for requests and answers; protobuf lives in ``wire``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from liaison.envelope import Envelope
from liaison.query import Predicate, Query


@dataclass(frozen=True, slots=True)
class Requester:
    agency: str
    subject: str
    roles: tuple[str, ...]
    issuer: str
    # From the token's `attributes` claim, e.g. {"clearance": "secret"}.
    attributes: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """Who asked, as ledger entries and a node's inbox keep it."""
        return {
            "agency": self.agency,
            "subject": self.subject,
            "roles": list(self.roles),
            "issuer": self.issuer,
            "attributes": dict(self.attributes),
        }


# How long a node accepts a request after its issue, and how far apart the
# parties' clocks may be: node config defaults, and what an investigator's
# client allows when it checks that a signed request is this search's.
DEFAULT_MAX_REQUEST_AGE_S = 300
DEFAULT_CLOCK_SKEW_S = 30


@dataclass(frozen=True, slots=True)
class QueryRequest:
    query_id: str
    gateway_id: str
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    audience: tuple[str, ...]
    requester: Requester
    purpose: str
    case_ref: str
    catalog_version: str
    query: Query
    # The legal basis the investigator cites, where a node's policy requires one.
    legal_basis: str = ""


class AnswerStatus(StrEnum):
    ANSWERED = "answered"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Decision:
    permitted: bool
    rules: tuple[str, ...]
    reason: str = ""
    obligations: tuple[str, ...] = ()
    # One line per rule considered: why it applied, or why it did not.
    explanation: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Count:
    """A count as released: exact, "fewer than ``minimum``", or within ``noise_bound``.

    Under a minimum count the node adds bounded noise (``node/noise.py``), so
    that released counts cannot be added and subtracted to isolate a small one:
    the true count is then within ``noise_bound`` of ``value``, and at least
    ``minimum``.
    """

    value: int
    below_minimum: bool = False
    minimum: int = 0
    noise_bound: int = 0

    @property
    def approximate(self) -> bool:
        return self.noise_bound > 0 and not self.below_minimum

    def __str__(self) -> str:
        if self.below_minimum:
            return f"fewer than {self.minimum}"
        if self.approximate:
            return f"≈ {self.value} (±{self.noise_bound})"
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One count-by cell; ``noise_bound`` as for :class:`Count`."""

    key: str | None
    count: int
    noise_bound: int = 0


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    query_id: str
    node_id: str
    request_digest: bytes
    answered_at_ms: int
    status: AnswerStatus
    decision: Decision
    hit: bool = False
    count: Count | None = None
    buckets: tuple[Bucket, ...] = ()
    buckets_suppressed: bool = False
    bucket_minimum: int = 0
    fields: tuple[str, ...] = ()
    rows: tuple[tuple[str | None, ...], ...] = field(default=())
    withheld_fields: tuple[str, ...] = ()
    truncated: bool = False
    # Opaque references to the matched records, for a follow-up to this node.
    record_refs: tuple[str, ...] = ()
    # The holding agency's policy asked to be told of this hit, and was.
    holder_notified: bool = False


class NodeStatus(StrEnum):
    """What became of one node's part of a federated search."""

    ANSWERED = "answered"
    DENIED = "denied"
    TIMED_OUT = "timed out"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    # Not in the request's audience: it does not offer the dataset.
    NOT_ASKED = "not asked"


@dataclass(frozen=True, slots=True)
class SearchInput:
    """An investigator's federated search, before the gateway signs it."""

    query: Query
    purpose: str
    case_ref: str
    nodes: tuple[str, ...] = ()
    deadline_ms: int = 0
    legal_basis: str = ""


@dataclass(frozen=True, slots=True)
class NodeResult:
    node_id: str
    status: NodeStatus
    detail: str = ""
    latency_ms: float = 0.0
    answer: QueryAnswer | None = None
    answer_digest: str = ""
    # The node's signed answer exactly as it sent it (ANSWERED and DENIED), so
    # that a client holding the node's key can check ``answer`` against it.
    signed_answer: Envelope | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    query_id: str
    query: Query
    results: tuple[NodeResult, ...]
    # The request as the gateway signed and sent it; every signed answer names
    # the SHA-256 of its payload.
    signed_request: Envelope | None = None


@dataclass(frozen=True, slots=True)
class SearchStarted:
    """A streamed search's first event: the request is logged and on its way."""

    query_id: str
    signed_request: Envelope | None
    # The nodes asked, as the signed request's audience lists them.
    asked: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SearchSummary:
    """A streamed search's last event: every node's outcome is in the ledger."""

    query_id: str
    # Nodes asked that gave no answer (timed out, unreachable, error), in audience order.
    not_answered: tuple[str, ...]
    counts: dict[NodeStatus, int]


# What a streamed search sends, in order: one SearchStarted, one NodeResult
# per node, one SearchSummary.
SearchEvent = SearchStarted | NodeResult | SearchSummary


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """A batch's first message: what every chunk asks, and the predicate its values go in."""

    search: SearchInput
    # Without values: each chunk adds its own.
    predicate: Predicate
    chunk_size: int
    # How many values follow, duplicates included.
    value_count: int


@dataclass(frozen=True, slots=True)
class BatchChunkResult:
    """What the federation said about one chunk of a batch's values."""

    chunk: int
    # Where the chunk's values start among the batch's (duplicates dropped), and how many.
    first_value: int
    value_count: int
    result: SearchResult


@dataclass(frozen=True, slots=True)
class DryRunNodeResult:
    """What one node's published policy would decide, without asking its data."""

    node_id: str
    # None when the policy could not be had; ``detail`` says why.
    decision: Decision | None
    policy_sha256: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DryRunResult:
    query: Query
    results: tuple[DryRunNodeResult, ...]


def document_sha256(document: str) -> str:
    """Hex SHA-256 of a policy document's UTF-8 bytes, as a PublishedPolicy names it."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    """The payload a node signs when it publishes its policy document.

    The node builds it once at startup and signs its wire form; the gateway
    reads it back after verifying the signature.
    """

    node_id: str
    catalog_version: str
    # The policy document (TOML) exactly as the node loaded it.
    document: str
    document_sha256: str
    published_at_ms: int

    @classmethod
    def of(
        cls, *, node_id: str, catalog_version: str, document: str, published_at_ms: int
    ) -> PublishedPolicy:
        return cls(
            node_id=node_id,
            catalog_version=catalog_version,
            document=document,
            document_sha256=document_sha256(document),
            published_at_ms=published_at_ms,
        )
