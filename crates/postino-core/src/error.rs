//! The core's operational errors. Front-ends map each variant to their protocol's code in one
//! exhaustive `match`.

use postino_storage::LogError;

/// Why a core operation was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    /// A named exchange or queue does not exist (AMQP 404 not-found).
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    /// A declaration contradicts what exists, or a precondition of the call does not hold
    /// (AMQP 406 precondition-failed).
    #[error("precondition failed: {reason}")]
    PreconditionFailed { reason: String },
    /// The name or operation is reserved (AMQP 403 access-refused).
    #[error("access refused: {reason}")]
    AccessRefused { reason: String },
    /// The source address failed too many logins lately; refused without a password check
    /// (AMQP 403 access-refused, HTTP 429).
    #[error("too many failed logins from {address}; try again in {} s", retry_after_ms.div_ceil(1000))]
    TooManyLogins {
        address: String,
        retry_after_ms: u64,
    },
    /// The queue is exclusive to another connection (AMQP 405 resource-locked).
    #[error("queue '{queue}' is locked by another connection")]
    ResourceLocked { queue: String },
    /// An argument has the wrong type or value (AMQP 406 with the argument named).
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument { name: String, reason: String },
    /// A settlement names a delivery that is not outstanding (AMQP 406 unknown delivery tag).
    #[error("unknown delivery {delivery}")]
    UnknownDelivery { delivery: u64 },
    /// The queue refused a publish (it is full under `x-overflow: reject-publish`): a negative
    /// confirm (AMQP `basic.nack`).
    #[error("queue '{queue}' refused the message: {reason}")]
    PublishRejected { queue: String, reason: String },
    /// The queue's owner task has stopped (the queue was deleted or failed).
    #[error("queue '{queue}' is not running")]
    QueueStopped { queue: String },
    /// Definitions could not be saved or loaded.
    #[error("definitions {path}: {reason}")]
    Definitions { path: String, reason: String },
    /// A stored message does not decode.
    #[error("stored message is corrupt: {reason}")]
    CorruptMessage { reason: &'static str },
    /// A stream read named an offset outside the partition's log (Kafka
    /// OFFSET_OUT_OF_RANGE); the reader chooses how to reset.
    #[error("offset {requested} of {stream}/{partition} is out of range [{earliest}, {latest}]")]
    OffsetOutOfRange {
        stream: String,
        partition: u32,
        requested: u64,
        earliest: u64,
        latest: u64,
    },
    /// The stream has no such partition (Kafka UNKNOWN_TOPIC_OR_PARTITION).
    #[error("stream '{stream}' has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        stream: String,
        partition: u32,
        partitions: u32,
    },
    /// A producer's epoch is older than the partition's (Kafka INVALID_PRODUCER_EPOCH): a newer
    /// instance of the same producer took over.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    ProducerFenced {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// A producer's batch does not continue its sequence (Kafka OUT_OF_ORDER_SEQUENCE_NUMBER):
    /// a batch before it was lost, so writing it would reorder or leave a gap.
    #[error("producer {producer_id} sent sequence {received}, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// A consumer-group request was refused; `error` says why (each maps to a Kafka code).
    #[error("group '{group}': {error}")]
    Group { group: String, error: GroupError },
    /// A transactional request was refused; `error` says why (each maps to a Kafka code).
    #[error("transaction{}: {error}", transactional_id.as_ref().map(|id| format!(" '{id}'")).unwrap_or_default())]
    Transaction {
        transactional_id: Option<String>,
        error: TransactionError,
    },
    /// A partition's owner task has stopped (the stream was deleted or its log failed).
    #[error("partition {stream}/{partition} is not running")]
    PartitionStopped { stream: String, partition: u32 },
    /// The log failed (AMQP 541 internal-error; the queue stops), or the file system is full
    /// (AMQP 506 resource-error; nothing was stored).
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

impl CoreError {
    /// Whether the write was refused because the file system is full: nothing of it was
    /// stored, and the same write succeeds once space is freed.
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        matches!(self, CoreError::Storage(LogError::NoSpace { .. }))
    }
}

/// Why a consumer-group request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member id is not (or no longer) in the group (Kafka UNKNOWN_MEMBER_ID): join again.
    #[error("unknown member")]
    UnknownMember,
    /// The request names another generation than the group's (Kafka ILLEGAL_GENERATION).
    #[error("stale generation")]
    IllegalGeneration,
    /// The group is rebalancing: join again (Kafka REBALANCE_IN_PROGRESS).
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// The member's protocol type or assignment protocols do not match the group's (Kafka
    /// INCONSISTENT_GROUP_PROTOCOL).
    #[error("inconsistent group protocol")]
    InconsistentProtocol,
    /// A newer member took this static instance id (Kafka FENCED_INSTANCE_ID).
    #[error("fenced instance id")]
    FencedInstance,
    /// The session timeout is outside the broker's bounds (Kafka INVALID_SESSION_TIMEOUT).
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    /// The group has as many members as it may (Kafka GROUP_MAX_SIZE_REACHED).
    #[error("group is full")]
    GroupFull,
    /// The group has members: it cannot be deleted (Kafka NON_EMPTY_GROUP).
    #[error("group has members")]
    NotEmpty,
}

/// Why a transactional request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// The request does not fit the transaction's state, e.g. a commit after an abort began
    /// (Kafka INVALID_TXN_STATE).
    #[error("invalid transaction state")]
    InvalidState,
    /// A transactional batch for a partition the coordinator did not add to the producer's
    /// transaction (Kafka INVALID_TXN_STATE).
    #[error("the partition is not in the producer's transaction")]
    NotInTransaction,
    /// The producer id does not belong to the transactional id (Kafka
    /// INVALID_PRODUCER_ID_MAPPING).
    #[error("producer id does not match the transactional id")]
    UnknownProducerId,
    /// The transaction timeout is outside the broker's bounds (Kafka
    /// INVALID_TRANSACTION_TIMEOUT).
    #[error("invalid transaction timeout")]
    InvalidTimeout,
}
