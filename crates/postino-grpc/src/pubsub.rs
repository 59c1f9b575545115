//! The `PubSub` service: a subscription is a private queue bound to an exchange with the
//! subscriber's binding key and content filter (`x-filter`); its handle names it until it is
//! unsubscribed or expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postino_core::{Action, ConsumerSpec, Filter, QueueSpec};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, caller};
use crate::convert::message_from;
use crate::queues::{Forwarding, filtered_binding, forward, publish};
use crate::transactions::Part;
use crate::{Shared, proto, status_of};

/// The exchange of a publish or subscription that names none.
const DEFAULT_EXCHANGE: &str = "amq.topic";
/// Undelivered events a subscription stream holds for its client.
const SUBSCRIPTION_PREFETCH: u32 = 64;

/// `name`, or `default` when it is empty.
fn or_default<'a>(name: &'a str, default: &'a str) -> &'a str {
    if name.is_empty() { default } else { name }
}

#[derive(Debug, Clone)]
struct Subscription {
    vhost: String,
    user: String,
    queue: String,
}

/// The live subscriptions by handle.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Mutex<HashMap<String, Subscription>>);

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscription>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subscription of `handle` if `caller` made it.
    fn find(&self, handle: &str, caller: &Caller) -> Result<Subscription, Status> {
        self.lock()
            .get(handle)
            .filter(|found| found.user == caller.user && found.vhost == caller.host.name())
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no subscription '{handle}' (expired or unsubscribed)"
                ))
            })
    }
}

#[derive(Debug)]
pub(crate) struct Service(pub Arc<Shared>);

/// Ends the subscription of `handle`: its queue goes, and with it its stream.
async fn end(shared: &Shared, handle: &str) {
    let Some(subscription) = shared.subscriptions.lock().remove(handle) else {
        return;
    };
    if let Some(host) = shared.broker.vhost(&subscription.vhost) {
        let _ = host.delete_queue(&subscription.queue).await;
    }
}

impl Service {
    /// Starts a subscription for `request`; returns its handle.
    fn start(&self, caller: &Caller, request: &proto::SubscribeRequest) -> Result<String, Status> {
        let exchange = or_default(&request.exchange, DEFAULT_EXCHANGE);
        let key = or_default(&request.binding_key, "#");
        if !request.filter.is_empty() {
            Filter::parse(&request.filter)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let handle = format!("{stamp:x}{:x}", self.0.consumer_id() & !(1 << 63));
        let queue = format!("postino.sub.{handle}");
        caller.may(Action::Read, "exchange", exchange)?;
        caller.may(Action::Configure, "queue", &queue)?;
        caller.may(Action::Write, "queue", &queue)?;
        caller
            .host
            .declare_queue(&queue, QueueSpec::transient())
            .map_err(|error| status_of(&error))?;
        let bound = caller
            .host
            .bind(filtered_binding(exchange, &queue, key, &request.filter));
        let subscription = Subscription {
            vhost: caller.host.name().to_owned(),
            user: caller.user.clone(),
            queue,
        };
        self.0
            .subscriptions
            .lock()
            .insert(handle.clone(), subscription);
        if let Err(error) = bound {
            let shared = Arc::clone(&self.0);
            let handle = handle.clone();
            tokio::spawn(async move { end(&shared, &handle).await });
            return Err(status_of(&error));
        }
        if request.expiry_ms > 0 {
            let (shared, handle) = (Arc::clone(&self.0), handle.clone());
            let expiry = Duration::from_millis(request.expiry_ms);
            tokio::spawn(async move {
                tokio::time::sleep(expiry).await;
                end(&shared, &handle).await;
            });
        }
        Ok(handle)
    }
}

#[tonic::async_trait]
impl proto::pub_sub_server::PubSub for Service {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let mut request = request.into_inner();
        let sync = request.sync();
        let message = message_from(request.message.take().unwrap_or_default());
        let exchange = or_default(&request.exchange, DEFAULT_EXCHANGE);
        caller.may(Action::Write, "exchange", exchange)?;
        if !request.transaction.is_empty() {
            let part = Part::Publish {
                exchange: exchange.to_owned(),
                routing_key: request.routing_key,
                message: Box::new(message),
            };
            self.0
                .transactions
                .add(&caller, &request.transaction, part)?;
            return Ok(Response::new(proto::PublishReply { routed: 0 }));
        }
        let routed = publish(&caller.host, exchange, &request.routing_key, message, sync).await?;
        Ok(Response::new(proto::PublishReply {
            routed: u32::try_from(routed).unwrap_or(u32::MAX),
        }))
    }

    type SubscribeStream = ReceiverStream<Result<proto::SubscriptionEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let handle = if request.handle.is_empty() {
            self.start(&caller, &request)?
        } else {
            request.handle.clone()
        };
        let subscription = self.0.subscriptions.find(&handle, &caller)?;
        let queue = caller
            .host
            .queue_for(&subscription.queue, None)
            .map_err(|error| status_of(&error))?;
        let consumer = self.0.consumer_id();
        let spec = ConsumerSpec {
            prefetch_count: SUBSCRIPTION_PREFETCH,
            ..ConsumerSpec::default()
        };
        let deliveries = queue
            .consume(consumer, spec)
            .await
            .map_err(|error| status_of(&error))?;
        // Without an expiry the subscription lasts as long as its stream.
        let lasts = request.expiry_ms == 0 && request.handle.is_empty();
        let (shared, ending) = (Arc::clone(&self.0), handle.clone());
        let ended = move || {
            if lasts {
                tokio::spawn(async move { end(&shared, &ending).await });
            }
        };
        // The handle goes first, ahead of the events.
        let subscribed = proto::SubscriptionEvent {
            item: Some(proto::subscription_event::Item::Subscribed(handle)),
        };
        let events = forward(
            queue,
            consumer,
            deliveries,
            Forwarding {
                settle_on_send: true,
                gone_is_error: false,
            },
            Some(subscribed),
            |delivery| proto::SubscriptionEvent {
                item: Some(proto::subscription_event::Item::Event(delivery)),
            },
            ended,
        );
        Ok(Response::new(ReceiverStream::new(events)))
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::UnsubscribeReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let handle = request.into_inner().handle;
        self.0.subscriptions.find(&handle, &caller)?;
        end(&self.0, &handle).await;
        Ok(Response::new(proto::UnsubscribeReply {}))
    }
}
