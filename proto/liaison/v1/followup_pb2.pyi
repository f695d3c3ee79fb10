from . import envelope_pb2 as _envelope_pb2
from . import query_pb2 as _query_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Urgency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    URGENCY_UNSPECIFIED: _ClassVar[Urgency]
    URGENCY_ROUTINE: _ClassVar[Urgency]
    URGENCY_URGENT: _ClassVar[Urgency]
    URGENCY_IMMEDIATE_RISK: _ClassVar[Urgency]

class DecisionOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_OUTCOME_UNSPECIFIED: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_APPROVED: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_PARTIAL: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_REFUSED: _ClassVar[DecisionOutcome]
URGENCY_UNSPECIFIED: Urgency
URGENCY_ROUTINE: Urgency
URGENCY_URGENT: Urgency
URGENCY_IMMEDIATE_RISK: Urgency
DECISION_OUTCOME_UNSPECIFIED: DecisionOutcome
DECISION_OUTCOME_APPROVED: DecisionOutcome
DECISION_OUTCOME_PARTIAL: DecisionOutcome
DECISION_OUTCOME_REFUSED: DecisionOutcome

class FollowUpRequest(_message.Message):
    __slots__ = ("followup_id", "gateway_id", "issued_at_ms", "expires_at_ms", "nonce", "node_id", "requester", "query_id", "record_refs", "fields", "purpose", "case_ref", "legal_basis", "urgency", "answer_by_ms", "text", "catalog_version")
    FOLLOWUP_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_REFS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    followup_id: str
    gateway_id: str
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    node_id: str
    requester: _query_pb2.Requester
    query_id: str
    record_refs: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedScalarFieldContainer[str]
    purpose: str
    case_ref: str
    legal_basis: str
    urgency: Urgency
    answer_by_ms: int
    text: str
    catalog_version: str
    def __init__(self, followup_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., node_id: _Optional[str] = ..., requester: _Optional[_Union[_query_pb2.Requester, _Mapping]] = ..., query_id: _Optional[str] = ..., record_refs: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., purpose: _Optional[str] = ..., case_ref: _Optional[str] = ..., legal_basis: _Optional[str] = ..., urgency: _Optional[_Union[Urgency, str]] = ..., answer_by_ms: _Optional[int] = ..., text: _Optional[str] = ..., catalog_version: _Optional[str] = ...) -> None: ...

class FollowUpAck(_message.Message):
    __slots__ = ("followup_id", "node_id", "request_digest", "received_at_ms", "accepted", "reason", "rules", "answer_by_ms", "decidable_fields")
    FOLLOWUP_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDABLE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    followup_id: str
    node_id: str
    request_digest: bytes
    received_at_ms: int
    accepted: bool
    reason: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    answer_by_ms: int
    decidable_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, followup_id: _Optional[str] = ..., node_id: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., received_at_ms: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., answer_by_ms: _Optional[int] = ..., decidable_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class FieldDecision(_message.Message):
    __slots__ = ("field", "released", "handling", "reason")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    HANDLING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    field: str
    released: bool
    handling: str
    reason: str
    def __init__(self, field: _Optional[str] = ..., released: _Optional[bool] = ..., handling: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FollowUpDecision(_message.Message):
    __slots__ = ("followup_id", "node_id", "request_digest", "decided_at_ms", "outcome", "field_decisions", "reason", "officer", "officer_issuer", "rules", "fields", "rows")
    FOLLOWUP_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FIELD_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFICER_FIELD_NUMBER: _ClassVar[int]
    OFFICER_ISSUER_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    followup_id: str
    node_id: str
    request_digest: bytes
    decided_at_ms: int
    outcome: DecisionOutcome
    field_decisions: _containers.RepeatedCompositeFieldContainer[FieldDecision]
    reason: str
    officer: str
    officer_issuer: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[_query_pb2.Row]
    def __init__(self, followup_id: _Optional[str] = ..., node_id: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., decided_at_ms: _Optional[int] = ..., outcome: _Optional[_Union[DecisionOutcome, str]] = ..., field_decisions: _Optional[_Iterable[_Union[FieldDecision, _Mapping]]] = ..., reason: _Optional[str] = ..., officer: _Optional[str] = ..., officer_issuer: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[_query_pb2.Row, _Mapping]]] = ...) -> None: ...

class InboxItem(_message.Message):
    __slots__ = ("id", "kind", "received_at_ms", "answer_by_ms", "status", "requester", "purpose", "case_ref", "legal_basis", "urgency", "text", "query_id", "fields", "decidable_fields", "default_handling", "rules", "dataset", "record_refs", "record_keys", "preview_fields", "preview_rows", "decision", "officer_roles")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    DECIDABLE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HANDLING_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RECORD_REFS_FIELD_NUMBER: _ClassVar[int]
    RECORD_KEYS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_ROWS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    OFFICER_ROLES_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    received_at_ms: int
    answer_by_ms: int
    status: str
    requester: _query_pb2.Requester
    purpose: str
    case_ref: str
    legal_basis: str
    urgency: Urgency
    text: str
    query_id: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    decidable_fields: _containers.RepeatedScalarFieldContainer[str]
    default_handling: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    record_refs: _containers.RepeatedScalarFieldContainer[str]
    record_keys: _containers.RepeatedScalarFieldContainer[str]
    preview_fields: _containers.RepeatedScalarFieldContainer[str]
    preview_rows: _containers.RepeatedCompositeFieldContainer[_query_pb2.Row]
    decision: _envelope_pb2.Envelope
    officer_roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., received_at_ms: _Optional[int] = ..., answer_by_ms: _Optional[int] = ..., status: _Optional[str] = ..., requester: _Optional[_Union[_query_pb2.Requester, _Mapping]] = ..., purpose: _Optional[str] = ..., case_ref: _Optional[str] = ..., legal_basis: _Optional[str] = ..., urgency: _Optional[_Union[Urgency, str]] = ..., text: _Optional[str] = ..., query_id: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., decidable_fields: _Optional[_Iterable[str]] = ..., default_handling: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., record_refs: _Optional[_Iterable[str]] = ..., record_keys: _Optional[_Iterable[str]] = ..., preview_fields: _Optional[_Iterable[str]] = ..., preview_rows: _Optional[_Iterable[_Union[_query_pb2.Row, _Mapping]]] = ..., decision: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., officer_roles: _Optional[_Iterable[str]] = ...) -> None: ...

class ListInboxRequest(_message.Message):
    __slots__ = ("overdue_only", "include_all")
    OVERDUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ALL_FIELD_NUMBER: _ClassVar[int]
    overdue_only: bool
    include_all: bool
    def __init__(self, overdue_only: _Optional[bool] = ..., include_all: _Optional[bool] = ...) -> None: ...

class ListInboxResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxItem]
    def __init__(self, items: _Optional[_Iterable[_Union[InboxItem, _Mapping]]] = ...) -> None: ...

class GetInboxItemRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetInboxItemResponse(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: InboxItem
    def __init__(self, item: _Optional[_Union[InboxItem, _Mapping]] = ...) -> None: ...

class FieldChoice(_message.Message):
    __slots__ = ("field", "release", "handling", "reason")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    HANDLING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    field: str
    release: bool
    handling: str
    reason: str
    def __init__(self, field: _Optional[str] = ..., release: _Optional[bool] = ..., handling: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "choices", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    choices: _containers.RepeatedCompositeFieldContainer[FieldChoice]
    reason: str
    def __init__(self, id: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[FieldChoice, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: _envelope_pb2.Envelope
    def __init__(self, decision: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...
