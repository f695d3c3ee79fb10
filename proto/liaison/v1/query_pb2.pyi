from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    OPERATION_MATCH: _ClassVar[Operation]
    OPERATION_COUNT: _ClassVar[Operation]
    OPERATION_COUNT_BY: _ClassVar[Operation]
    OPERATION_RECORDS: _ClassVar[Operation]

class Comparator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARATOR_UNSPECIFIED: _ClassVar[Comparator]
    COMPARATOR_EQ: _ClassVar[Comparator]
    COMPARATOR_IN: _ClassVar[Comparator]
    COMPARATOR_GTE: _ClassVar[Comparator]
    COMPARATOR_LTE: _ClassVar[Comparator]
    COMPARATOR_NEAR: _ClassVar[Comparator]

class AnswerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_STATUS_UNSPECIFIED: _ClassVar[AnswerStatus]
    ANSWER_STATUS_ANSWERED: _ClassVar[AnswerStatus]
    ANSWER_STATUS_DENIED: _ClassVar[AnswerStatus]
OPERATION_UNSPECIFIED: Operation
OPERATION_MATCH: Operation
OPERATION_COUNT: Operation
OPERATION_COUNT_BY: Operation
OPERATION_RECORDS: Operation
COMPARATOR_UNSPECIFIED: Comparator
COMPARATOR_EQ: Comparator
COMPARATOR_IN: Comparator
COMPARATOR_GTE: Comparator
COMPARATOR_LTE: Comparator
COMPARATOR_NEAR: Comparator
ANSWER_STATUS_UNSPECIFIED: AnswerStatus
ANSWER_STATUS_ANSWERED: AnswerStatus
ANSWER_STATUS_DENIED: AnswerStatus

class Predicate(_message.Message):
    __slots__ = ("field", "comparator", "values", "max_distance")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    COMPARATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    field: str
    comparator: Comparator
    values: _containers.RepeatedScalarFieldContainer[str]
    max_distance: int
    def __init__(self, field: _Optional[str] = ..., comparator: _Optional[_Union[Comparator, str]] = ..., values: _Optional[_Iterable[str]] = ..., max_distance: _Optional[int] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("dataset", "operation", "predicates", "fields", "group_by", "limit")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PREDICATES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    operation: Operation
    predicates: _containers.RepeatedCompositeFieldContainer[Predicate]
    fields: _containers.RepeatedScalarFieldContainer[str]
    group_by: str
    limit: int
    def __init__(self, dataset: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., predicates: _Optional[_Iterable[_Union[Predicate, _Mapping]]] = ..., fields: _Optional[_Iterable[str]] = ..., group_by: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Requester(_message.Message):
    __slots__ = ("agency", "subject", "roles", "issuer", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    agency: str
    subject: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    issuer: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, agency: _Optional[str] = ..., subject: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., issuer: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("query_id", "gateway_id", "issued_at_ms", "expires_at_ms", "nonce", "audience", "requester", "purpose", "case_ref", "catalog_version", "query", "legal_basis")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    gateway_id: str
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    audience: _containers.RepeatedScalarFieldContainer[str]
    requester: Requester
    purpose: str
    case_ref: str
    catalog_version: str
    query: Query
    legal_basis: str
    def __init__(self, query_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., audience: _Optional[_Iterable[str]] = ..., requester: _Optional[_Union[Requester, _Mapping]] = ..., purpose: _Optional[str] = ..., case_ref: _Optional[str] = ..., catalog_version: _Optional[str] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., legal_basis: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("permitted", "rules", "reason", "obligations", "explanation")
    PERMITTED_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    permitted: bool
    rules: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    obligations: _containers.RepeatedScalarFieldContainer[str]
    explanation: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, permitted: _Optional[bool] = ..., rules: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., obligations: _Optional[_Iterable[str]] = ..., explanation: _Optional[_Iterable[str]] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("present", "value")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    present: bool
    value: str
    def __init__(self, present: _Optional[bool] = ..., value: _Optional[str] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class Bucket(_message.Message):
    __slots__ = ("key", "key_present", "count", "noise_bound")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NOISE_BOUND_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_present: bool
    count: int
    noise_bound: int
    def __init__(self, key: _Optional[str] = ..., key_present: _Optional[bool] = ..., count: _Optional[int] = ..., noise_bound: _Optional[int] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("value", "below_minimum", "minimum", "noise_bound")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BELOW_MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    NOISE_BOUND_FIELD_NUMBER: _ClassVar[int]
    value: int
    below_minimum: bool
    minimum: int
    noise_bound: int
    def __init__(self, value: _Optional[int] = ..., below_minimum: _Optional[bool] = ..., minimum: _Optional[int] = ..., noise_bound: _Optional[int] = ...) -> None: ...

class QueryAnswer(_message.Message):
    __slots__ = ("query_id", "node_id", "request_digest", "answered_at_ms", "status", "decision", "hit", "count", "buckets", "buckets_suppressed", "bucket_minimum", "fields", "rows", "withheld_fields", "truncated", "record_refs", "holder_notified")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MINIMUM_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RECORD_REFS_FIELD_NUMBER: _ClassVar[int]
    HOLDER_NOTIFIED_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    node_id: str
    request_digest: bytes
    answered_at_ms: int
    status: AnswerStatus
    decision: Decision
    hit: bool
    count: Count
    buckets: _containers.RepeatedCompositeFieldContainer[Bucket]
    buckets_suppressed: bool
    bucket_minimum: int
    fields: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    withheld_fields: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    record_refs: _containers.RepeatedScalarFieldContainer[str]
    holder_notified: bool
    def __init__(self, query_id: _Optional[str] = ..., node_id: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., answered_at_ms: _Optional[int] = ..., status: _Optional[_Union[AnswerStatus, str]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., hit: _Optional[bool] = ..., count: _Optional[_Union[Count, _Mapping]] = ..., buckets: _Optional[_Iterable[_Union[Bucket, _Mapping]]] = ..., buckets_suppressed: _Optional[bool] = ..., bucket_minimum: _Optional[int] = ..., fields: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., withheld_fields: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ..., record_refs: _Optional[_Iterable[str]] = ..., holder_notified: _Optional[bool] = ...) -> None: ...
