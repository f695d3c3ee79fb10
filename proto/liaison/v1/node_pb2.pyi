from . import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeliverRequest(_message.Message):
    __slots__ = ("request", "ledger_proof")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    LEDGER_PROOF_FIELD_NUMBER: _ClassVar[int]
    request: _envelope_pb2.Envelope
    ledger_proof: LedgerProof
    def __init__(self, request: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., ledger_proof: _Optional[_Union[LedgerProof, _Mapping]] = ...) -> None: ...

class DeliverResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: _envelope_pb2.Envelope
    def __init__(self, ack: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("followup_ids",)
    FOLLOWUP_IDS_FIELD_NUMBER: _ClassVar[int]
    followup_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, followup_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("decisions", "acks")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Envelope]
    acks: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Envelope]
    def __init__(self, decisions: _Optional[_Iterable[_Union[_envelope_pb2.Envelope, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[_envelope_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("request", "ledger_proof")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    LEDGER_PROOF_FIELD_NUMBER: _ClassVar[int]
    request: _envelope_pb2.Envelope
    ledger_proof: LedgerProof
    def __init__(self, request: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., ledger_proof: _Optional[_Union[LedgerProof, _Mapping]] = ...) -> None: ...

class LedgerProof(_message.Message):
    __slots__ = ("entry", "leaf_index", "inclusion_path", "checkpoint")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PATH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    leaf_index: int
    inclusion_path: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    def __init__(self, entry: _Optional[bytes] = ..., leaf_index: _Optional[int] = ..., inclusion_path: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class AnswerResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: _envelope_pb2.Envelope
    def __init__(self, answer: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("node_id", "catalog_version", "datasets", "key_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    catalog_version: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetOffer]
    key_id: str
    def __init__(self, node_id: _Optional[str] = ..., catalog_version: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetOffer, _Mapping]]] = ..., key_id: _Optional[str] = ...) -> None: ...

class DatasetOffer(_message.Message):
    __slots__ = ("dataset", "fields")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: _envelope_pb2.Envelope
    def __init__(self, policy: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class PublishedPolicy(_message.Message):
    __slots__ = ("node_id", "catalog_version", "document", "document_sha256", "published_at_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    catalog_version: str
    document: str
    document_sha256: str
    published_at_ms: int
    def __init__(self, node_id: _Optional[str] = ..., catalog_version: _Optional[str] = ..., document: _Optional[str] = ..., document_sha256: _Optional[str] = ..., published_at_ms: _Optional[int] = ...) -> None: ...
