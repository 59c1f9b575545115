//! The message queue of the lecture notes: `put`, `get` (blocking, optionally matching a
//! pattern), `poll` (never blocking) and `notify` (a callback on each arrival), with the
//! settlement of what was taken.

use std::time::Duration;

use postino_grpc::proto::{
    self, ChangeVisibilityRequest, DeclareQueueRequest, DeleteQueueRequest, GetRequest,
    NackRequest, NotifyRequest, PollRequest, PutRequest, SettleRequest,
};
use postino_grpc::{MAX_MESSAGE_BYTES, QueuesClient};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::{Client, Error, Message, SyncMode, Value, with_backoff};

pub(crate) fn queues(channel: Channel) -> QueuesClient<Channel> {
    QueuesClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// How long a taken message stays invisible to others unless settled, by default (SQS's
/// visibility timeout).
const LEASE: Duration = Duration::from_secs(30);

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A queue of a broker: competing consumers, each message to one of them.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    name: String,
}

/// A message taken from a queue: settle it with [`Delivery::ack`] or [`Delivery::nack`]
/// before its lease ends, or it returns to the queue for another consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    client: Client,
    inner: proto::Delivery,
    message: Message,
}

impl Delivery {
    pub(crate) fn new(client: Client, mut inner: proto::Delivery) -> Self {
        let message = Message(inner.message.take().unwrap_or_default());
        Self {
            client,
            inner,
            message,
        }
    }

    #[must_use]
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The queue it came from.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// What settles it: the message's offset in its queue.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.inner.delivery_id
    }

    /// Delivered before and not settled then.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The routing key it was published with.
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.inner.routing_key
    }

    /// Done with it: the queue forgets it.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when it is no longer held (settled, or its lease ended).
    pub async fn ack(&self) -> Result<(), Error> {
        let request = SettleRequest {
            vhost: self.client.vhost(),
            queue: self.inner.queue.clone(),
            delivery_ids: vec![self.id()],
            transaction: String::new(),
        };
        crate::call!(&self.client, queues, ack, request)?;
        Ok(())
    }

    /// Gives it back: to the queue (`requeue`), or to the dead-letter exchange (or away).
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when it is no longer held.
    pub async fn nack(&self, requeue: bool) -> Result<(), Error> {
        let request = NackRequest {
            vhost: self.client.vhost(),
            queue: self.inner.queue.clone(),
            delivery_ids: vec![self.id()],
            requeue,
            transaction: String::new(),
        };
        crate::call!(&self.client, queues, nack, request)?;
        Ok(())
    }

    /// Holds it for `lease` more from now (0: gives it back at once).
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when it is no longer held.
    pub async fn extend(&self, lease: Duration) -> Result<(), Error> {
        let request = ChangeVisibilityRequest {
            vhost: self.client.vhost(),
            queue: self.inner.queue.clone(),
            delivery_id: self.id(),
            lease_ms: ms(lease),
        };
        crate::call!(&self.client, queues, change_visibility, request)?;
        Ok(())
    }
}

/// What a [`Queue::notify`] callback does with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledge it.
    Ack,
    /// Back to the queue for another delivery.
    Requeue,
    /// Refuse it: dead-lettered, or dropped.
    Reject,
}

/// The callback a [`Queue::notify`] installed; it runs until [`Notification::stop`] (or
/// the drop of this handle).
#[derive(Debug)]
pub struct Notification {
    task: JoinHandle<()>,
}

impl Notification {
    /// Removes the callback (returning once it has stopped); deliveries it had not settled
    /// return to the queue.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Whether the callback is still installed (the queue may have been deleted).
    #[must_use]
    pub fn is_active(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Notification {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Queue {
    pub(crate) fn new(client: Client, name: &str) -> Self {
        Self {
            client,
            name: name.to_owned(),
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares it durable (its persistent messages survive a restart); `Ok(false)` when it
    /// existed alike.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when it exists with other properties.
    pub async fn declare(&self) -> Result<bool, Error> {
        self.declare_with(&[]).await
    }

    /// Declares it durable with RabbitMQ's queue arguments (`x-max-length`,
    /// `x-message-ttl`, `x-dead-letter-exchange`, `x-max-priority`, …).
    ///
    /// # Errors
    /// An argument the broker refuses; `FAILED_PRECONDITION` when it exists otherwise.
    pub async fn declare_with(&self, arguments: &[(&str, Value)]) -> Result<bool, Error> {
        let request = DeclareQueueRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            durable: true,
            auto_delete: false,
            arguments: arguments
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone().into()))
                .collect(),
        };
        let reply = crate::call!(&self.client, queues, declare, request)?;
        Ok(reply.created)
    }

    /// Deletes it with its messages.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn delete(&self) -> Result<(), Error> {
        let request = DeleteQueueRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            if_unused: false,
            if_empty: false,
        };
        crate::call!(&self.client, queues, delete, request)?;
        Ok(())
    }

    /// `put(msg)`: returns once the message is stored (durable when it is persistent).
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing queue; `RESOURCE_EXHAUSTED` when the queue is full.
    pub async fn put(&self, message: impl Into<Message>) -> Result<(), Error> {
        self.put_until(message, SyncMode::Stored).await.map(drop)
    }

    /// Puts `message`, returning at the synchronisation point `sync`: routed
    /// ([`SyncMode::None`]), stored, delivered to a consumer, or answered (the answer is
    /// returned: see [`Queue::request`]).
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use std::time::Duration;
    /// use postino_client::SyncMode;
    ///
    /// let jobs = client.queue("jobs");
    /// jobs.declare().await?;
    /// let consumer = client.clone();
    /// let taken = tokio::spawn(async move { consumer.queue("jobs").get(Duration::from_secs(10)).await });
    /// // Returns once the consumer's get has the message.
    /// jobs.put_until("wake up", SyncMode::Delivered).await?;
    /// let job = taken.await.expect("the consumer")?.expect("the message");
    /// assert_eq!(job.message().text(), Some("wake up"));
    /// job.ack().await?;
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// As [`Queue::put`]; `DEADLINE_EXCEEDED` when an answer does not come in 30 s.
    pub async fn put_until(
        &self,
        message: impl Into<Message>,
        sync: SyncMode,
    ) -> Result<Option<Delivery>, Error> {
        self.put_request(message.into(), sync, None).await
    }

    /// Request/reply: puts `message` with a `reply_to` the broker makes for this call and
    /// returns the first answer a consumer gives ([`Client::reply`]).
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use std::time::Duration;
    ///
    /// let rpc = client.queue("double");
    /// rpc.declare().await?;
    /// let server = client.clone();
    /// let serving = tokio::spawn(async move {
    ///     let queue = server.queue("double");
    ///     let request = queue.get(Duration::from_secs(10)).await?.expect("a request");
    ///     let n: u64 = request.message().text().unwrap_or("0").parse().unwrap_or(0);
    ///     server.reply(&request, (n * 2).to_string()).await?;
    ///     request.ack().await
    /// });
    /// let answer = rpc.request("21", Duration::from_secs(10)).await?;
    /// assert_eq!(answer.message().text(), Some("42"));
    /// serving.await.expect("the server")?;
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// As [`Queue::put`]; `DEADLINE_EXCEEDED` when no answer comes within `timeout`.
    pub async fn request(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Delivery, Error> {
        let answer = self
            .put_request(message.into(), SyncMode::Replied, Some(ms(timeout)))
            .await?;
        answer.ok_or_else(|| {
            tonic::Status::internal("the broker answered a request without its reply").into()
        })
    }

    async fn put_request(
        &self,
        message: Message,
        sync: SyncMode,
        reply_timeout_ms: Option<u64>,
    ) -> Result<Option<Delivery>, Error> {
        let request = PutRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            message: Some(message.0),
            sync: sync.into(),
            reply_timeout_ms,
            transaction: String::new(),
        };
        let reply = crate::call!(&self.client, queues, put, request)?;
        Ok(reply
            .reply
            .map(|answer| Delivery::new(self.client.clone(), answer)))
    }

    /// `get()`: the next message, waiting up to `wait` for one (`None` when none came). It
    /// is leased for 30 s: settle it before, or it returns to the queue.
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing queue.
    pub async fn get(&self, wait: Duration) -> Result<Option<Delivery>, Error> {
        self.take(wait, "").await
    }

    /// `get(pattern)`: the next message `filter` holds for (a selector over properties and
    /// headers: `priority > 3 AND region IN ('eu', 'us')`, `docs/filters.md`), waiting up to
    /// `wait`; the others stay for other consumers.
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use std::time::Duration;
    /// use postino_client::{Code, Message};
    ///
    /// let orders = client.queue("orders");
    /// orders.declare().await?;
    /// orders.put(Message::new("small").header("amount", 5)).await?;
    /// orders.put(Message::new("large").header("amount", 500)).await?;
    /// let large = orders
    ///     .get_matching("amount > 100", Duration::from_secs(1))
    ///     .await?
    ///     .expect("the large order");
    /// assert_eq!(large.message().text(), Some("large"));
    /// let refused = orders.get_matching("amount >", Duration::ZERO).await.unwrap_err();
    /// assert_eq!(refused.code(), Some(Code::InvalidArgument));
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming the position of a filter that does not parse.
    pub async fn get_matching(
        &self,
        filter: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        self.take(wait, filter).await
    }

    async fn take(&self, wait: Duration, filter: &str) -> Result<Option<Delivery>, Error> {
        let request = GetRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            wait_ms: ms(wait),
            auto_ack: false,
            lease_ms: Some(ms(LEASE)),
            filter: filter.to_owned(),
        };
        let reply = crate::call!(&self.client, queues, get, request)?;
        Ok(self.delivered(reply.delivery))
    }

    /// `poll()`: the next message if there is one now; never waits.
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// let jobs = client.queue("jobs");
    /// jobs.declare().await?;
    /// assert!(jobs.poll().await?.is_none(), "an empty queue answers at once");
    /// jobs.put("job 1").await?;
    /// let job = jobs.poll().await?.expect("job 1 is there");
    /// job.ack().await?;
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing queue.
    pub async fn poll(&self) -> Result<Option<Delivery>, Error> {
        let request = PollRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            auto_ack: false,
            lease_ms: Some(ms(LEASE)),
            filter: String::new(),
        };
        let reply = crate::call!(&self.client, queues, poll, request)?;
        Ok(self.delivered(reply.delivery))
    }

    fn delivered(&self, delivery: Option<proto::Delivery>) -> Option<Delivery> {
        delivery.map(|delivery| Delivery::new(self.client.clone(), delivery))
    }

    /// `notify(cb)`: calls `callback` with each message as it arrives (at most `prefetch`
    /// unsettled at once) and settles it as the callback says. Across a lost connection the
    /// callback is installed again, with backoff; what it held returns to the queue and comes
    /// again (at-least-once).
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use postino_client::Settle;
    ///
    /// let jobs = client.queue("jobs");
    /// jobs.declare().await?;
    /// let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    /// let notification = jobs
    ///     .notify(10, move |job| {
    ///         let _ = done.send(job.message().text().unwrap_or_default().to_owned());
    ///         Settle::Ack
    ///     })
    ///     .await?;
    /// jobs.put("job 1").await?;
    /// jobs.put("job 2").await?;
    /// assert_eq!(finished.recv().await.as_deref(), Some("job 1"));
    /// assert_eq!(finished.recv().await.as_deref(), Some("job 2"));
    /// notification.stop().await;
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing queue.
    pub async fn notify(
        &self,
        prefetch: u32,
        callback: impl FnMut(&Delivery) -> Settle + Send + 'static,
    ) -> Result<Notification, Error> {
        let request = NotifyRequest {
            vhost: self.client.vhost(),
            queue: self.name.clone(),
            prefetch,
            auto_ack: false,
            filter: String::new(),
        };
        let open = {
            let (client, request) = (self.client.clone(), request.clone());
            move || {
                let (client, request) = (client.clone(), request.clone());
                async move {
                    queues(client.channel())
                        .notify(client.request(request))
                        .await
                        .map(tonic::Response::into_inner)
                }
            }
        };
        let budget = self.client.inner.options.retry_for;
        let first = with_backoff(budget, crate::unreachable, &open).await?;
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            let mut callback = callback;
            let mut stream = first;
            loop {
                match stream.message().await {
                    Ok(Some(delivery)) => {
                        let delivery = Delivery::new(client.clone(), delivery);
                        let settled = match callback(&delivery) {
                            Settle::Ack => delivery.ack().await,
                            Settle::Requeue => delivery.nack(true).await,
                            Settle::Reject => delivery.nack(false).await,
                        };
                        if let Err(error) = settled {
                            tracing::warn!(%error, "a notified delivery was not settled");
                        }
                    }
                    Err(status) if crate::unreachable(&status) => {
                        match with_backoff(budget, crate::unreachable, &open).await {
                            Ok(again) => stream = again,
                            Err(error) => {
                                tracing::warn!(%error, "notify ended: the server is gone");
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(Notification { task })
    }
}
