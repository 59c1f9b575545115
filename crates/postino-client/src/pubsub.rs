//! Publish/subscribe of the lecture notes: `publish(event)`, `subscribe(filter, notify_cb,
//! expiry) -> handle`, `unsubscribe(handle)`, and `notify_cb(handle, event)` called for each
//! event a subscription matches.

use std::time::Duration;

use postino_grpc::proto::{
    self, PublishRequest, SubscribeRequest, UnsubscribeRequest, subscription_event::Item,
};
use postino_grpc::{MAX_MESSAGE_BYTES, PubSubClient};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::{Client, Error, Message, SyncMode, with_backoff};

pub(crate) fn pubsub(channel: Channel) -> PubSubClient<Channel> {
    PubSubClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Publish/subscribe on one exchange (`amq.topic` unless [`Client::pubsub_on`] says).
#[derive(Debug, Clone)]
pub struct PubSub {
    client: Client,
    exchange: String,
}

/// What a subscription takes: a topic pattern (`*` one word, `#` any number:
/// `orders.*.eu`, default `#`) and optionally a content filter over properties and headers
/// (`amount > 100 AND currency = 'EUR'`, `docs/filters.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    topic: String,
    content: String,
}

impl Filter {
    /// Events whose topic matches `pattern`.
    #[must_use]
    pub fn topic(pattern: &str) -> Self {
        Self {
            topic: pattern.to_owned(),
            content: String::new(),
        }
    }

    /// Every event whose content `expression` holds for.
    #[must_use]
    pub fn content(expression: &str) -> Self {
        Self::topic("#").and(expression)
    }

    /// Also requires the content `expression`.
    #[must_use]
    pub fn and(mut self, expression: &str) -> Self {
        self.content = if self.content.is_empty() {
            expression.to_owned()
        } else {
            format!("({}) AND ({expression})", self.content)
        };
        self
    }
}

impl From<&str> for Filter {
    fn from(pattern: &str) -> Self {
        Self::topic(pattern)
    }
}

/// An event a subscription received.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic (routing key) it was published with.
    pub topic: String,
    pub message: Message,
}

/// A live subscription: its handle, and the task calling its callback.
#[derive(Debug)]
pub struct Subscription {
    handle: String,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The handle the broker gave it.
    #[must_use]
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// Whether events still come (it ends when it expires or its exchange goes).
    #[must_use]
    pub fn is_active(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PubSub {
    pub(crate) fn new(client: Client, exchange: &str) -> Self {
        Self {
            client,
            exchange: exchange.to_owned(),
        }
    }

    /// `publish(event)` on `topic`: returns how many subscriptions (queues) took it, once it
    /// is stored in each.
    ///
    /// # Errors
    /// `NOT_FOUND` when the exchange does not exist.
    pub async fn publish(&self, topic: &str, event: impl Into<Message>) -> Result<u32, Error> {
        let request = PublishRequest {
            vhost: self.client.vhost(),
            exchange: self.exchange.clone(),
            routing_key: topic.to_owned(),
            message: Some(event.into().0),
            sync: SyncMode::Stored.into(),
            transaction: String::new(),
        };
        let reply = crate::call!(&self.client, pubsub, publish, request)?;
        Ok(reply.routed)
    }

    /// `subscribe(filter, notify_cb, expiry) -> handle`: calls `callback(handle, event)` for
    /// each event published from now on that `filter` takes, until [`PubSub::unsubscribe`] or
    /// `expiry`. With an expiry the subscription outlives a lost connection: the client
    /// resumes it (with backoff) and gets what was published meanwhile; without one it lasts
    /// as long as its connection.
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use std::time::Duration;
    /// use postino_client::{Filter, Message};
    ///
    /// let news = client.pubsub();
    /// let (seen, mut events) = tokio::sync::mpsc::unbounded_channel();
    /// let subscription = news
    ///     .subscribe(
    ///         Filter::topic("sport.*").and("lang = 'it'"),
    ///         move |handle, event| {
    ///             let text = event.message.text().map(str::to_owned);
    ///             let _ = seen.send((handle.to_owned(), event.topic, text));
    ///         },
    ///         Some(Duration::from_secs(600)),
    ///     )
    ///     .await?;
    /// let italian = Message::new("gol!").header("lang", "it");
    /// assert_eq!(news.publish("sport.calcio", italian.clone()).await?, 1);
    /// assert_eq!(news.publish("sport.calcio", Message::new("goal!").header("lang", "en")).await?, 0);
    /// assert_eq!(news.publish("politics.eu", italian.clone()).await?, 0);
    /// let (handle, topic, text) = events.recv().await.expect("an event");
    /// assert_eq!((handle.as_str(), topic.as_str()), (subscription.handle(), "sport.calcio"));
    /// assert_eq!(text.as_deref(), Some("gol!"));
    /// news.unsubscribe(subscription).await?;
    /// assert_eq!(news.publish("sport.calcio", italian).await?, 0, "nobody listens now");
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a content filter that does not parse (naming the position);
    /// `NOT_FOUND` for a missing exchange.
    pub async fn subscribe(
        &self,
        filter: impl Into<Filter>,
        callback: impl FnMut(&str, Event) + Send + 'static,
        expiry: Option<Duration>,
    ) -> Result<Subscription, Error> {
        let filter = filter.into();
        let request = SubscribeRequest {
            vhost: self.client.vhost(),
            exchange: self.exchange.clone(),
            binding_key: filter.topic,
            filter: filter.content,
            expiry_ms: expiry.map_or(0, |expiry| {
                u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            handle: String::new(),
        };
        let budget = self.client.inner.options.retry_for;
        let (handle, first) =
            with_backoff(budget, crate::unreachable, || open(&self.client, &request)).await?;
        let resumable = expiry.is_some();
        let (client, subscribed) = (self.client.clone(), handle.clone());
        let task = tokio::spawn(async move {
            let mut callback = callback;
            let mut stream = first;
            let resume = SubscribeRequest {
                handle: subscribed.clone(),
                ..request
            };
            loop {
                match stream.message().await {
                    Ok(Some(proto::SubscriptionEvent {
                        item: Some(Item::Event(delivery)),
                    })) => {
                        let event = Event {
                            topic: delivery.routing_key,
                            message: Message(delivery.message.unwrap_or_default()),
                        };
                        callback(&subscribed, event);
                    }
                    Ok(Some(_)) => {}
                    Err(status) if resumable && crate::unreachable(&status) => {
                        match with_backoff(budget, crate::unreachable, || open(&client, &resume))
                            .await
                        {
                            Ok((_, again)) => stream = again,
                            Err(error) => {
                                tracing::warn!(%error, "a subscription could not be resumed");
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(Subscription { handle, task })
    }

    /// `unsubscribe(handle)`: the subscription ends; events not yet called back are dropped.
    ///
    /// # Errors
    /// `NOT_FOUND` when it already ended (expired, or unsubscribed).
    pub async fn unsubscribe(&self, mut subscription: Subscription) -> Result<(), Error> {
        let request = UnsubscribeRequest {
            vhost: self.client.vhost(),
            handle: subscription.handle.clone(),
        };
        subscription.task.abort();
        let _ = (&mut subscription.task).await;
        crate::call!(&self.client, pubsub, unsubscribe, request)?;
        Ok(())
    }
}

/// Opens (or resumes) a subscription stream; its handle, from the stream's first item.
async fn open(
    client: &Client,
    request: &SubscribeRequest,
) -> Result<(String, Streaming<proto::SubscriptionEvent>), Status> {
    let mut stream = pubsub(client.channel())
        .subscribe(client.request(request.clone()))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(proto::SubscriptionEvent {
            item: Some(Item::Subscribed(handle)),
        }) => Ok((handle, stream)),
        _ => Err(Status::internal(
            "a subscription stream did not start with its handle",
        )),
    }
}
