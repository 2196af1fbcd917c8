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
    __slots__ = ("peer_id", "gossip_address", "steps", "accuracy", "loss", "known_peers", "bytes_sent", "bytes_received", "exchanges", "merges", "rejected", "model_version", "model_digest", "uptime_seconds", "model", "dataset", "device", "training_done", "samples", "gossip_interval", "codec", "merge", "log_level", "last_checkpoint", "last_checkpoint_step", "checkpoint_age_seconds", "resumed_from", "resumed_step", "resumed_digest", "leaving", "bootstrapped_from", "fanout", "memory_model_bytes", "memory_optimizer_bytes", "memory_sender_bytes", "memory_receiver_bytes", "sender_links", "receiver_links", "max_links", "memory_bound_bytes", "mode", "round", "round_role", "rounds_aggregated", "lr", "lr_schedule", "answered_early", "early_reply_bytes")
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
    GOSSIP_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    RESUMED_STEP_FIELD_NUMBER: _ClassVar[int]
    RESUMED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAPPED_FROM_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_OPTIMIZER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SENDER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RECEIVER_BYTES_FIELD_NUMBER: _ClassVar[int]
    SENDER_LINKS_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_LINKS_FIELD_NUMBER: _ClassVar[int]
    MAX_LINKS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BOUND_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ROLE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_AGGREGATED_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_EARLY_FIELD_NUMBER: _ClassVar[int]
    EARLY_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
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
    gossip_interval: float
    codec: str
    merge: str
    log_level: str
    last_checkpoint: str
    last_checkpoint_step: int
    checkpoint_age_seconds: float
    resumed_from: str
    resumed_step: int
    resumed_digest: str
    leaving: bool
    bootstrapped_from: str
    fanout: int
    memory_model_bytes: int
    memory_optimizer_bytes: int
    memory_sender_bytes: int
    memory_receiver_bytes: int
    sender_links: int
    receiver_links: int
    max_links: int
    memory_bound_bytes: int
    mode: str
    round: int
    round_role: str
    rounds_aggregated: int
    lr: float
    lr_schedule: str
    answered_early: int
    early_reply_bytes: int
    def __init__(self, peer_id: _Optional[str] = ..., gossip_address: _Optional[str] = ..., steps: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., known_peers: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., exchanges: _Optional[int] = ..., merges: _Optional[int] = ..., rejected: _Optional[int] = ..., model_version: _Optional[int] = ..., model_digest: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., model: _Optional[str] = ..., dataset: _Optional[str] = ..., device: _Optional[str] = ..., training_done: _Optional[bool] = ..., samples: _Optional[int] = ..., gossip_interval: _Optional[float] = ..., codec: _Optional[str] = ..., merge: _Optional[str] = ..., log_level: _Optional[str] = ..., last_checkpoint: _Optional[str] = ..., last_checkpoint_step: _Optional[int] = ..., checkpoint_age_seconds: _Optional[float] = ..., resumed_from: _Optional[str] = ..., resumed_step: _Optional[int] = ..., resumed_digest: _Optional[str] = ..., leaving: _Optional[bool] = ..., bootstrapped_from: _Optional[str] = ..., fanout: _Optional[int] = ..., memory_model_bytes: _Optional[int] = ..., memory_optimizer_bytes: _Optional[int] = ..., memory_sender_bytes: _Optional[int] = ..., memory_receiver_bytes: _Optional[int] = ..., sender_links: _Optional[int] = ..., receiver_links: _Optional[int] = ..., max_links: _Optional[int] = ..., memory_bound_bytes: _Optional[int] = ..., mode: _Optional[str] = ..., round: _Optional[int] = ..., round_role: _Optional[str] = ..., rounds_aggregated: _Optional[int] = ..., lr: _Optional[float] = ..., lr_schedule: _Optional[str] = ..., answered_early: _Optional[int] = ..., early_reply_bytes: _Optional[int] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerReport(_message.Message):
    __slots__ = ("steps", "accuracy", "exchanges", "bytes_sent", "bytes_received", "compression_ratio", "age_seconds")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    accuracy: float
    exchanges: int
    bytes_sent: int
    bytes_received: int
    compression_ratio: float
    age_seconds: float
    def __init__(self, steps: _Optional[int] = ..., accuracy: _Optional[float] = ..., exchanges: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("peer_id", "address", "state", "last_contact_seconds_ago", "exchanges", "merges", "bytes_sent", "bytes_received", "source", "failures", "incarnation", "rtt_ms", "report", "reputation", "banned", "reputation_reason", "sender_replica_bytes", "receiver_copy_bytes", "rate_bytes_per_second", "exchange_deadline_seconds")
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
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_REASON_FIELD_NUMBER: _ClassVar[int]
    SENDER_REPLICA_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_COPY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RATE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
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
    incarnation: int
    rtt_ms: float
    report: PeerReport
    reputation: float
    banned: bool
    reputation_reason: str
    sender_replica_bytes: int
    receiver_copy_bytes: int
    rate_bytes_per_second: float
    exchange_deadline_seconds: float
    def __init__(self, peer_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., last_contact_seconds_ago: _Optional[float] = ..., exchanges: _Optional[int] = ..., merges: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., source: _Optional[str] = ..., failures: _Optional[int] = ..., incarnation: _Optional[int] = ..., rtt_ms: _Optional[float] = ..., report: _Optional[_Union[PeerReport, _Mapping]] = ..., reputation: _Optional[float] = ..., banned: _Optional[bool] = ..., reputation_reason: _Optional[str] = ..., sender_replica_bytes: _Optional[int] = ..., receiver_copy_bytes: _Optional[int] = ..., rate_bytes_per_second: _Optional[float] = ..., exchange_deadline_seconds: _Optional[float] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("prometheus_text", "samples")
    class SamplesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMETHEUS_TEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    prometheus_text: str
    samples: _containers.ScalarMap[str, float]
    def __init__(self, prometheus_text: _Optional[str] = ..., samples: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("path", "step", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    step: int
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., step: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("data", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("in_flight",)
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    def __init__(self, in_flight: _Optional[int] = ...) -> None: ...

class SetRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class SetResponse(_message.Message):
    __slots__ = ("key", "value", "previous")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    previous: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., previous: _Optional[str] = ...) -> None: ...
