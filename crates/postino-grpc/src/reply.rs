//! The synchronous puts of the lecture notes: one that returns once a consumer has taken the
//! message (delivery-based), and one that returns the consumer's answer (response-based:
//! request/reply with a correlation id over a private reply queue, RabbitMQ's RPC pattern).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postino_core::{Action, GetSpec, QueueSpec, VirtualHost};
use postino_types::{HeaderValue, Headers, Message};
use tonic::Status;

use crate::auth::Caller;
use crate::convert::wire_delivery;
use crate::{Shared, proto, status_of};

/// How long a `SYNC_REPLIED` put waits for its answer when the request names no time.
const DEFAULT_REPLY_TIMEOUT_MS: u64 = 30_000;
/// A reply queue outlives a put that was abandoned (its client gone) by this long, unused,
/// before the broker deletes it (`x-expires`).
const REPLY_QUEUE_GRACE_MS: u64 = 60_000;

/// Puts `message` into `queue` and waits until a consumer or a get of any protocol takes it.
pub(crate) async fn put_until_delivered(
    host: &VirtualHost,
    queue: &str,
    message: Message,
) -> Result<(), Status> {
    let (confirm, receipt) = host
        .put_with_receipt(queue, message)
        .await
        .map_err(|error| status_of(&error))?;
    confirm.wait().await.map_err(|error| status_of(&error))?;
    receipt
        .delivered()
        .await
        .map_err(|error| Status::aborted(format!("stored, but never delivered: {error}")))
}

/// Deletes a reply queue when the put that made it ends, however it ends.
struct ReplyQueue {
    host: Arc<VirtualHost>,
    name: String,
}

impl Drop for ReplyQueue {
    fn drop(&mut self) {
        let (host, name) = (Arc::clone(&self.host), std::mem::take(&mut self.name));
        tokio::spawn(async move { host.delete_queue(&name).await });
    }
}

/// Puts `message` into `queue` with `reply_to` naming a private queue (and a correlation id
/// when it has none), and returns the first answer carrying that correlation id; answers
/// with another are dropped. `DEADLINE_EXCEEDED` when none comes within the timeout.
pub(crate) async fn put_until_replied(
    shared: &Shared,
    caller: &Caller,
    queue: &str,
    mut message: Message,
    timeout_ms: Option<u64>,
) -> Result<proto::Delivery, Status> {
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_REPLY_TIMEOUT_MS);
    let name = format!("postino.reply.{:x}", shared.consumer_id() & !(1 << 63));
    caller.may(Action::Configure, "queue", &name)?;
    let mut arguments = Headers::new();
    let expires = timeout_ms.saturating_add(REPLY_QUEUE_GRACE_MS);
    arguments.insert(
        "x-expires".to_owned(),
        HeaderValue::Int(i64::try_from(expires).unwrap_or(i64::MAX)),
    );
    let spec = QueueSpec {
        arguments,
        ..QueueSpec::transient()
    };
    let (replies, _) = caller
        .host
        .declare_queue(&name, spec)
        .map_err(|error| status_of(&error))?;
    let _cleanup = ReplyQueue {
        host: Arc::clone(&caller.host),
        name: name.clone(),
    };
    let correlation = message
        .properties
        .correlation_id
        .get_or_insert_with(|| name.clone())
        .clone();
    message.properties.reply_to = Some(name.clone());
    caller
        .host
        .publish("", queue, message)
        .await
        .map_err(|error| status_of(&error))?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let spec = GetSpec {
        auto_ack: true,
        lease_ms: None,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded(format!(
                "no reply on '{name}' within {timeout_ms} ms"
            )));
        }
        let answer = replies
            .get(spec, Some(left))
            .await
            .map_err(|error| status_of(&error))?;
        if let Some(answer) = answer
            && answer.message.properties.correlation_id.as_deref() == Some(&correlation)
        {
            return Ok(wire_delivery(&name, &answer));
        }
    }
}
