from . import envelope_pb2 as _envelope_pb2
from . import followup_pb2 as _followup_pb2
from . import query_pb2 as _query_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATUS_UNSPECIFIED: _ClassVar[NodeStatus]
    NODE_STATUS_ANSWERED: _ClassVar[NodeStatus]
    NODE_STATUS_DENIED: _ClassVar[NodeStatus]
    NODE_STATUS_TIMED_OUT: _ClassVar[NodeStatus]
    NODE_STATUS_UNREACHABLE: _ClassVar[NodeStatus]
    NODE_STATUS_ERROR: _ClassVar[NodeStatus]
    NODE_STATUS_NOT_ASKED: _ClassVar[NodeStatus]
NODE_STATUS_UNSPECIFIED: NodeStatus
NODE_STATUS_ANSWERED: NodeStatus
NODE_STATUS_DENIED: NodeStatus
NODE_STATUS_TIMED_OUT: NodeStatus
NODE_STATUS_UNREACHABLE: NodeStatus
NODE_STATUS_ERROR: NodeStatus
NODE_STATUS_NOT_ASKED: NodeStatus

class FileFollowUpRequest(_message.Message):
    __slots__ = ("query_id", "node_id", "record_refs", "fields", "purpose", "case_ref", "legal_basis", "urgency", "text")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_REFS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    node_id: str
    record_refs: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedScalarFieldContainer[str]
    purpose: str
    case_ref: str
    legal_basis: str
    urgency: _followup_pb2.Urgency
    text: str
    def __init__(self, query_id: _Optional[str] = ..., node_id: _Optional[str] = ..., record_refs: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., purpose: _Optional[str] = ..., case_ref: _Optional[str] = ..., legal_basis: _Optional[str] = ..., urgency: _Optional[_Union[_followup_pb2.Urgency, str]] = ..., text: _Optional[str] = ...) -> None: ...

class FileFollowUpResponse(_message.Message):
    __slots__ = ("followup",)
    FOLLOWUP_FIELD_NUMBER: _ClassVar[int]
    followup: FollowUp
    def __init__(self, followup: _Optional[_Union[FollowUp, _Mapping]] = ...) -> None: ...

class FollowUp(_message.Message):
    __slots__ = ("followup_id", "node_id", "status", "filed_at_ms", "answer_by_ms", "signed_request", "ack", "decision", "detail", "decided_at_ms")
    FOLLOWUP_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    followup_id: str
    node_id: str
    status: str
    filed_at_ms: int
    answer_by_ms: int
    signed_request: _envelope_pb2.Envelope
    ack: _envelope_pb2.Envelope
    decision: _envelope_pb2.Envelope
    detail: str
    decided_at_ms: int
    def __init__(self, followup_id: _Optional[str] = ..., node_id: _Optional[str] = ..., status: _Optional[str] = ..., filed_at_ms: _Optional[int] = ..., answer_by_ms: _Optional[int] = ..., signed_request: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., ack: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., decision: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., detail: _Optional[str] = ..., decided_at_ms: _Optional[int] = ...) -> None: ...

class ListFollowUpsRequest(_message.Message):
    __slots__ = ("overdue_only",)
    OVERDUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    overdue_only: bool
    def __init__(self, overdue_only: _Optional[bool] = ...) -> None: ...

class ListFollowUpsResponse(_message.Message):
    __slots__ = ("followups",)
    FOLLOWUPS_FIELD_NUMBER: _ClassVar[int]
    followups: _containers.RepeatedCompositeFieldContainer[FollowUp]
    def __init__(self, followups: _Optional[_Iterable[_Union[FollowUp, _Mapping]]] = ...) -> None: ...

class GetFollowUpRequest(_message.Message):
    __slots__ = ("followup_id",)
    FOLLOWUP_ID_FIELD_NUMBER: _ClassVar[int]
    followup_id: str
    def __init__(self, followup_id: _Optional[str] = ...) -> None: ...

class GetFollowUpResponse(_message.Message):
    __slots__ = ("followup",)
    FOLLOWUP_FIELD_NUMBER: _ClassVar[int]
    followup: FollowUp
    def __init__(self, followup: _Optional[_Union[FollowUp, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "purpose", "case_ref", "nodes", "deadline_ms", "legal_basis")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    query: _query_pb2.Query
    purpose: str
    case_ref: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    deadline_ms: int
    legal_basis: str
    def __init__(self, query: _Optional[_Union[_query_pb2.Query, _Mapping]] = ..., purpose: _Optional[str] = ..., case_ref: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ..., deadline_ms: _Optional[int] = ..., legal_basis: _Optional[str] = ...) -> None: ...

class NodeResult(_message.Message):
    __slots__ = ("node_id", "status", "detail", "latency_ms", "answer", "answer_digest", "signed_answer")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: NodeStatus
    detail: str
    latency_ms: float
    answer: _query_pb2.QueryAnswer
    answer_digest: str
    signed_answer: _envelope_pb2.Envelope
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[_Union[NodeStatus, str]] = ..., detail: _Optional[str] = ..., latency_ms: _Optional[float] = ..., answer: _Optional[_Union[_query_pb2.QueryAnswer, _Mapping]] = ..., answer_digest: _Optional[str] = ..., signed_answer: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("query_id", "results", "signed_request")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    results: _containers.RepeatedCompositeFieldContainer[NodeResult]
    signed_request: _envelope_pb2.Envelope
    def __init__(self, query_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[NodeResult, _Mapping]]] = ..., signed_request: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class SearchStreamRequest(_message.Message):
    __slots__ = ("search",)
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    search: SearchRequest
    def __init__(self, search: _Optional[_Union[SearchRequest, _Mapping]] = ...) -> None: ...

class SearchStreamResponse(_message.Message):
    __slots__ = ("started", "result", "summary")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    started: SearchStarted
    result: NodeResult
    summary: SearchSummary
    def __init__(self, started: _Optional[_Union[SearchStarted, _Mapping]] = ..., result: _Optional[_Union[NodeResult, _Mapping]] = ..., summary: _Optional[_Union[SearchSummary, _Mapping]] = ...) -> None: ...

class SearchStarted(_message.Message):
    __slots__ = ("query_id", "signed_request", "asked")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ASKED_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    signed_request: _envelope_pb2.Envelope
    asked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, query_id: _Optional[str] = ..., signed_request: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., asked: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchSummary(_message.Message):
    __slots__ = ("query_id", "not_answered", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    not_answered: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.ScalarMap[str, int]
    def __init__(self, query_id: _Optional[str] = ..., not_answered: _Optional[_Iterable[str]] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("header", "values")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    values: BatchValues
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., values: _Optional[_Union[BatchValues, _Mapping]] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("search", "predicate", "chunk_size", "value_count")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PREDICATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    search: SearchRequest
    predicate: _query_pb2.Predicate
    chunk_size: int
    value_count: int
    def __init__(self, search: _Optional[_Union[SearchRequest, _Mapping]] = ..., predicate: _Optional[_Union[_query_pb2.Predicate, _Mapping]] = ..., chunk_size: _Optional[int] = ..., value_count: _Optional[int] = ...) -> None: ...

class BatchValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("chunk", "first_value", "value_count", "result")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FIRST_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    chunk: int
    first_value: int
    value_count: int
    result: SearchResponse
    def __init__(self, chunk: _Optional[int] = ..., first_value: _Optional[int] = ..., value_count: _Optional[int] = ..., result: _Optional[_Union[SearchResponse, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "key_id", "not_asked", "usual_latency_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_ASKED_FIELD_NUMBER: _ClassVar[int]
    USUAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    key_id: str
    not_asked: str
    usual_latency_ms: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., key_id: _Optional[str] = ..., not_asked: _Optional[str] = ..., usual_latency_ms: _Optional[float] = ...) -> None: ...

class DryRunRequest(_message.Message):
    __slots__ = ("search",)
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    search: SearchRequest
    def __init__(self, search: _Optional[_Union[SearchRequest, _Mapping]] = ...) -> None: ...

class DryRunResult(_message.Message):
    __slots__ = ("node_id", "decision", "policy_sha256", "detail")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    POLICY_SHA256_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    decision: _query_pb2.Decision
    policy_sha256: str
    detail: str
    def __init__(self, node_id: _Optional[str] = ..., decision: _Optional[_Union[_query_pb2.Decision, _Mapping]] = ..., policy_sha256: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class DryRunResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DryRunResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DryRunResult, _Mapping]]] = ...) -> None: ...
