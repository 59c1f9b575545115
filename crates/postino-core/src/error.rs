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
    /// The queue's log failed (AMQP 541 internal-error; the queue stops).
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}
