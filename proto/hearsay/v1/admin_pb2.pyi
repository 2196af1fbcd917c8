from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("peer_id", "gossip_address", "steps", "accuracy", "loss", "known_peers", "bytes_sent", "bytes_received", "exchanges", "merges", "rejected", "model_version", "model_digest", "uptime_seconds", "model", "dataset", "device", "training_done", "samples")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PEERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DONE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    gossip_address: str
    steps: int
    accuracy: float
    loss: float
    known_peers: int
    bytes_sent: int
    bytes_received: int
    exchanges: int
    merges: int
    rejected: int
    model_version: int
    model_digest: str
    uptime_seconds: float
    model: str
    dataset: str
    device: str
    training_done: bool
    samples: int
    def __init__(self, peer_id: _Optional[str] = ..., gossip_address: _Optional[str] = ..., steps: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., known_peers: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., exchanges: _Optional[int] = ..., merges: _Optional[int] = ..., rejected: _Optional[int] = ..., model_version: _Optional[int] = ..., model_digest: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., model: _Optional[str] = ..., dataset: _Optional[str] = ..., device: _Optional[str] = ..., training_done: _Optional[bool] = ..., samples: _Optional[int] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("peer_id", "address", "state", "last_contact_seconds_ago", "exchanges", "merges", "bytes_sent", "bytes_received", "source", "failures")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    address: str
    state: str
    last_contact_seconds_ago: float
    exchanges: int
    merges: int
    bytes_sent: int
    bytes_received: int
    source: str
    failures: int
    def __init__(self, peer_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., last_contact_seconds_ago: _Optional[float] = ..., exchanges: _Optional[int] = ..., merges: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., source: _Optional[str] = ..., failures: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ...) -> None: ...
