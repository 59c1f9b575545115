//! The `Queues` service: the lecture notes' message queue over a postino queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postino_core::topology::FILTER_ARGUMENT;
use postino_core::{
    Action, Binding, ConsumerSpec, CoreError, Destination, Filter, GetSpec, Outcome, QueueHandle,
    QueueSpec, VirtualHost,
};
use postino_types::Message;
use postino_types::{HeaderValue, Headers};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, caller};
use crate::convert::{headers_from, message_from, wire_delivery};
use crate::reply::{put_until_delivered, put_until_replied};
use crate::transactions::Part;
use crate::{Shared, proto, status_of};

/// A get's lease when the request names none, as SQS's default visibility timeout.
const DEFAULT_LEASE_MS: u64 = 30_000;
/// The filter of a request (`None` for an empty text); one that does not parse is
/// `INVALID_ARGUMENT` naming the position.
fn filter_of(text: &str) -> Result<Option<Filter>, Status> {
    (!text.is_empty())
        .then(|| Filter::parse(text))
        .transpose()
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

/// A filtered get looks at this many ready messages.
const SCAN_MAX: usize = 1_000;
/// How often a filtered get that waits looks again.
const FILTERED_WAIT_STEP: Duration = Duration::from_millis(25);
/// A stream's prefetch when the request names none.
const DEFAULT_PREFETCH: u32 = 100;
/// Deliveries a server stream holds for a client that is not reading: with the consumer's
/// prefetch, what bounds the server's memory for a slow client.
const STREAM_BUFFER: usize = 16;

#[derive(Debug)]
pub(crate) struct Service(pub Arc<Shared>);

fn status(error: CoreError) -> Status {
    status_of(&error)
}

/// Publishes `message` and waits as `sync` says; returns how many queues took it.
pub(crate) async fn publish(
    host: &VirtualHost,
    exchange: &str,
    routing_key: &str,
    message: Message,
    sync: proto::Sync,
) -> Result<usize, Status> {
    match sync {
        proto::Sync::Stored => host
            .publish(exchange, routing_key, message)
            .await
            .map(|routed| routed.queues)
            .map_err(status),
        proto::Sync::None => {
            let (routed, confirm) = host
                .publish_pipelined(exchange, routing_key, message)
                .await
                .map_err(status)?;
            // The caller asked not to wait: the owners append it all the same.
            drop(confirm);
            Ok(routed.queues)
        }
        proto::Sync::Delivered | proto::Sync::Replied => Err(Status::invalid_argument(
            "SYNC_DELIVERED and SYNC_REPLIED wait for one consumer: they apply to Put",
        )),
    }
}

fn queue_of(caller: &Caller, queue: &str, action: Action) -> Result<QueueHandle, Status> {
    caller.may(action, "queue", queue)?;
    caller.host.queue_for(queue, None).map_err(status)
}

/// How a server stream takes a queue's deliveries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding {
    /// Acknowledge each delivery once it is in the stream's buffer (at-most-once).
    pub settle_on_send: bool,
    /// End the stream with `NOT_FOUND` when the queue goes (else it just ends).
    pub gone_is_error: bool,
}

/// Delivers `deliveries` of `consumer` to a bounded server stream, after `first`, until the
/// client goes away or the queue ends. The consumer is cancelled at the end: what it held and
/// had not settled returns to the queue; then `ended` runs.
pub(crate) fn forward<T: Send + 'static>(
    queue: QueueHandle,
    consumer: u64,
    mut deliveries: mpsc::UnboundedReceiver<postino_core::Delivery>,
    how: Forwarding,
    first: Option<T>,
    wrap: impl Fn(proto::Delivery) -> T + Send + 'static,
    ended: impl FnOnce() + Send + 'static,
) -> mpsc::Receiver<Result<T, Status>> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    if let Some(first) = first {
        // The buffer is empty: there is room.
        let _ = sender.try_send(Ok(first));
    }
    tokio::spawn(async move {
        let name = queue.name().to_owned();
        loop {
            tokio::select! {
                delivery = deliveries.recv() => {
                    let Some(delivery) = delivery else {
                        if how.gone_is_error {
                            let gone = Status::not_found(format!("queue '{name}' was deleted"));
                            let _ = sender.send(Err(gone)).await;
                        }
                        break;
                    };
                    let id = delivery.id;
                    if sender.send(Ok(wrap(wire_delivery(&name, &delivery)))).await.is_err() {
                        break;
                    }
                    if how.settle_on_send {
                        let _ = queue.settle_pipelined(vec![id], Outcome::Accept).await;
                    }
                }
                () = sender.closed() => break,
            }
        }
        let _ = queue.cancel(consumer).await;
        ended();
    });
    receiver
}

impl Service {
    /// Settles deliveries now, or at the commit of `transaction` when it is not empty.
    async fn settle(
        &self,
        caller: &Caller,
        queue: String,
        ids: Vec<u64>,
        outcome: Outcome,
        transaction: &str,
    ) -> Result<Response<proto::SettleReply>, Status> {
        let handle = queue_of(caller, &queue, Action::Read)?;
        if transaction.is_empty() {
            handle.settle(ids, outcome).await.map_err(status)?;
        } else {
            let part = Part::Settle {
                queue,
                ids,
                outcome,
            };
            self.0.transactions.add(caller, transaction, part)?;
        }
        Ok(Response::new(proto::SettleReply {}))
    }

    async fn take(
        &self,
        caller: &Caller,
        queue: &str,
        wait_ms: u64,
        spec: GetSpec,
        filter: &str,
    ) -> Result<proto::GetReply, Status> {
        let handle = queue_of(caller, queue, Action::Read)?;
        let delivery = if let Some(filter) = filter_of(filter)? {
            let deadline = Instant::now() + Duration::from_millis(wait_ms);
            loop {
                let filter = filter.clone();
                let found = handle
                    .get_matching(spec, SCAN_MAX, move |message| {
                        let annotations = &message.annotations;
                        filter.matches(message, &annotations.exchange, &annotations.routing_key)
                    })
                    .await
                    .map_err(status)?;
                if found.is_some() || Instant::now() >= deadline {
                    break found;
                }
                tokio::time::sleep(FILTERED_WAIT_STEP).await;
            }
        } else {
            let wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
            handle.get(spec, wait).await.map_err(status)?
        };
        Ok(proto::GetReply {
            delivery: delivery.map(|delivery| wire_delivery(queue, &delivery)),
        })
    }
}

/// The binding a request names, once the caller may read the exchange and write the queue.
fn binding_of(caller: &Caller, request: proto::BindRequest) -> Result<Binding, Status> {
    caller.may(Action::Read, "exchange", &request.exchange)?;
    caller.may(Action::Write, "queue", &request.queue)?;
    Ok(filtered_binding(
        &request.exchange,
        &request.queue,
        &request.binding_key,
        &request.filter,
    ))
}

/// A binding of `exchange` to `queue` by `key`, with `filter` as `x-filter` unless empty.
pub(crate) fn filtered_binding(exchange: &str, queue: &str, key: &str, filter: &str) -> Binding {
    let mut arguments = Headers::new();
    if !filter.is_empty() {
        arguments.insert(
            FILTER_ARGUMENT.to_owned(),
            HeaderValue::Text(filter.to_owned()),
        );
    }
    Binding {
        source: exchange.to_owned(),
        destination: Destination::Queue(queue.to_owned()),
        key: key.to_owned(),
        arguments,
    }
}

fn get_spec(auto_ack: bool, lease_ms: Option<u64>) -> GetSpec {
    GetSpec {
        auto_ack,
        lease_ms: (!auto_ack).then(|| lease_ms.unwrap_or(DEFAULT_LEASE_MS)),
    }
}

#[tonic::async_trait]
impl proto::queues_server::Queues for Service {
    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Write, "exchange", "")?;
        if caller.host.queue(&request.queue).is_none() {
            return Err(Status::not_found(format!("no queue '{}'", request.queue)));
        }
        let sync = request.sync();
        let message = message_from(request.message.unwrap_or_default());
        if !request.transaction.is_empty() {
            if !matches!(sync, proto::Sync::Stored | proto::Sync::None) {
                return Err(Status::invalid_argument(
                    "a put in a transaction happens at its commit: it cannot wait for a consumer",
                ));
            }
            let part = Part::Publish {
                exchange: String::new(),
                routing_key: request.queue,
                message: Box::new(message),
            };
            self.0
                .transactions
                .add(&caller, &request.transaction, part)?;
            return Ok(Response::new(proto::PutReply { reply: None }));
        }
        let reply = match sync {
            proto::Sync::Delivered => {
                put_until_delivered(&caller.host, &request.queue, message).await?;
                None
            }
            proto::Sync::Replied => Some(
                put_until_replied(
                    &self.0,
                    &caller,
                    &request.queue,
                    message,
                    request.reply_timeout_ms,
                )
                .await?,
            ),
            proto::Sync::Stored | proto::Sync::None => {
                publish(&caller.host, "", &request.queue, message, sync).await?;
                None
            }
        };
        Ok(Response::new(proto::PutReply { reply }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let spec = get_spec(request.auto_ack, request.lease_ms);
        self.take(
            &caller,
            &request.queue,
            request.wait_ms,
            spec,
            &request.filter,
        )
        .await
        .map(Response::new)
    }

    async fn poll(
        &self,
        request: Request<proto::PollRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let spec = get_spec(request.auto_ack, request.lease_ms);
        self.take(&caller, &request.queue, 0, spec, &request.filter)
            .await
            .map(Response::new)
    }

    async fn ack(
        &self,
        request: Request<proto::SettleRequest>,
    ) -> Result<Response<proto::SettleReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        self.settle(
            &caller,
            request.queue,
            request.delivery_ids,
            Outcome::Accept,
            &request.transaction,
        )
        .await
    }

    async fn nack(
        &self,
        request: Request<proto::NackRequest>,
    ) -> Result<Response<proto::SettleReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let outcome = if request.requeue {
            Outcome::Requeue
        } else {
            Outcome::Discard
        };
        self.settle(
            &caller,
            request.queue,
            request.delivery_ids,
            outcome,
            &request.transaction,
        )
        .await
    }

    async fn change_visibility(
        &self,
        request: Request<proto::ChangeVisibilityRequest>,
    ) -> Result<Response<proto::SettleReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        queue_of(&caller, &request.queue, Action::Read)?
            .change_lease(request.delivery_id, request.lease_ms)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::SettleReply {}))
    }

    type NotifyStream = ReceiverStream<Result<proto::Delivery, Status>>;

    async fn notify(
        &self,
        request: Request<proto::NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let queue = queue_of(&caller, &request.queue, Action::Read)?;
        let consumer = self.0.consumer_id();
        let prefetch = if request.prefetch == 0 {
            DEFAULT_PREFETCH
        } else {
            request.prefetch
        };
        // Always a consumer with acks inside, so its prefetch bounds what it holds; an
        // auto-ack stream acknowledges each delivery once it is in the stream's buffer.
        let filter = filter_of(&request.filter)?;
        let spec = ConsumerSpec {
            prefetch_count: prefetch,
            filter,
            ..ConsumerSpec::default()
        };
        let deliveries = queue.consume(consumer, spec).await.map_err(status)?;
        let receiver = forward(
            queue,
            consumer,
            deliveries,
            Forwarding {
                settle_on_send: request.auto_ack,
                gone_is_error: true,
            },
            None,
            |delivery| delivery,
            || {},
        );
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn declare(
        &self,
        request: Request<proto::DeclareQueueRequest>,
    ) -> Result<Response<proto::DeclareQueueReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        if request.queue.is_empty() {
            return Err(Status::invalid_argument("a queue needs a name"));
        }
        caller.may(Action::Configure, "queue", &request.queue)?;
        let spec = QueueSpec {
            durable: request.durable,
            exclusive: false,
            auto_delete: request.auto_delete,
            arguments: headers_from(&request.arguments),
        };
        let created = caller
            .host
            .declare_queue_or_stream(&request.queue, spec)
            .map_err(status)?;
        Ok(Response::new(proto::DeclareQueueReply { created }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteQueueRequest>,
    ) -> Result<Response<proto::DeleteQueueReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Configure, "queue", &request.queue)?;
        caller
            .host
            .delete_queue_if(&request.queue, request.if_unused, request.if_empty)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteQueueReply {}))
    }

    async fn bind(
        &self,
        request: Request<proto::BindRequest>,
    ) -> Result<Response<proto::BindReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let binding = binding_of(&caller, request.into_inner())?;
        caller.host.bind(binding).map_err(status)?;
        Ok(Response::new(proto::BindReply {}))
    }

    async fn unbind(
        &self,
        request: Request<proto::BindRequest>,
    ) -> Result<Response<proto::BindReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let binding = binding_of(&caller, request.into_inner())?;
        caller.host.unbind(&binding).map_err(status)?;
        Ok(Response::new(proto::BindReply {}))
    }
}
