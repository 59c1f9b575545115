//! `basic`, `tx` and content handling: publishing (with confirms, returns and transactions),
//! consuming, getting and settling.

use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, basic, tx};
use postino_core::{Action, ConsumerSpec, CoreError, GetSpec, Outcome, VirtualHost};
use postino_types::Message;

use super::{
    CHANNEL_ERROR, COMMAND_INVALID, CONTENT_TOO_LARGE, Channel, Confirms, Consumer, FRAME_ERROR,
    Incoming, NO_ROUTE, NOT_IMPLEMENTED, Next, Pending, Session, UNEXPECTED_FRAME, flow_allows,
    lock, send_content, short,
};
use crate::convert::{headers_from_table, properties_from_amqp};

/// Deliveries a consumer's queue hands to its forwarder before the forwarder reports them
/// written: with [`super::Out::room`], what a consumer that stops reading can hold in memory,
/// whatever its prefetch.
const CONSUMER_WINDOW: u32 = 256;

impl Session {
    /// `basic.return` of a mandatory message that reached no queue (312 NO_ROUTE).
    pub(super) fn return_unroutable(
        &self,
        id: u16,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) {
        let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: NO_ROUTE,
            reply_text: short("NO_ROUTE"),
            exchange: short(exchange),
            routing_key: short(routing_key),
        }));
        send_content(&self.out, id, method, message, self.frame_max);
    }

    pub(super) async fn on_basic(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        method: basic::AMQPMethod,
    ) -> Result<Next, CoreError> {
        match method {
            basic::AMQPMethod::Qos(qos) => {
                // RabbitMQ's reading (`per_consumer_qos`): without `global` the count applies
                // to each consumer the channel starts from now on; with it, to all the
                // channel's unsettled consumer deliveries together.
                if qos.global {
                    lock(&self.channel(id).tags)
                        .channel_credit
                        .set_limit(qos.prefetch_count);
                } else if let Some(channel) = self.channels.get_mut(&id) {
                    channel.prefetch = qos.prefetch_count;
                }
                self.listed.describe_channel(id, |channel| {
                    let count = u32::from(qos.prefetch_count);
                    if qos.global {
                        channel.global_prefetch_count = count;
                    } else {
                        channel.prefetch_count = count;
                    }
                });
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
            }
            basic::AMQPMethod::Publish(publish) => {
                self.authorize(host, Action::Write, "exchange", publish.exchange.as_str())?;
                if let Some(channel) = self.channels.get_mut(&id) {
                    channel.incoming = Some(Incoming {
                        exchange: publish.exchange.as_str().to_owned(),
                        routing_key: publish.routing_key.as_str().to_owned(),
                        mandatory: publish.mandatory,
                        header: None,
                        body: Vec::new(),
                    });
                }
            }
            basic::AMQPMethod::Consume(consume) => self.consume(host, id, consume).await?,
            basic::AMQPMethod::Cancel(cancel) => {
                let tag = cancel.consumer_tag.as_str().to_owned();
                self.cancel_replies(id, &tag);
                let removed = self
                    .channels
                    .get_mut(&id)
                    .and_then(|channel| channel.consumers.remove(&tag));
                self.listed.describe_channel(id, |channel| {
                    channel.consumers.remove(&tag);
                });
                if let Some(consumer) = removed {
                    match consumer.end().await {
                        Ok(()) | Err(CoreError::QueueStopped { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
                self.reply_unless_nowait(
                    cancel.nowait,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: short(&tag),
                    })),
                );
            }
            basic::AMQPMethod::Get(get) => {
                self.authorize(host, Action::Read, "queue", get.queue.as_str())?;
                let queue = host.queue_for(get.queue.as_str(), Some(self.connection))?;
                let spec = GetSpec {
                    auto_ack: get.no_ack,
                    lease_ms: None,
                };
                match queue.get(spec, None).await? {
                    Some(delivery) => {
                        let stats = queue.stats().await?;
                        let tags = Arc::clone(&self.channel(id).tags);
                        let tag = if get.no_ack {
                            0
                        } else {
                            lock(&tags).assign(&queue, delivery.id)
                        };
                        let annotations = &delivery.message.annotations;
                        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                            delivery_tag: tag,
                            redelivered: annotations.redelivered,
                            exchange: short(&annotations.exchange),
                            routing_key: short(&annotations.routing_key),
                            message_count: stats.ready as u32,
                        }));
                        send_content(&self.out, id, method, &delivery.message, self.frame_max);
                    }
                    None => self.send(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                }
            }
            basic::AMQPMethod::Ack(ack) => {
                self.settle(id, ack.delivery_tag, ack.multiple, Outcome::Accept)
                    .await?
            }
            basic::AMQPMethod::Nack(nack) => {
                let outcome = if nack.requeue {
                    Outcome::Requeue
                } else {
                    Outcome::Discard
                };
                self.settle(id, nack.delivery_tag, nack.multiple, outcome)
                    .await?;
            }
            basic::AMQPMethod::Reject(reject) => {
                let outcome = if reject.requeue {
                    Outcome::Requeue
                } else {
                    Outcome::Discard
                };
                self.settle(id, reject.delivery_tag, false, outcome).await?;
            }
            basic::AMQPMethod::Recover(_) | basic::AMQPMethod::RecoverAsync(_) => {
                let unsettled = lock(&self.channel(id).tags)
                    .take(0, true)
                    .unwrap_or_default();
                for (queue, ids) in unsettled {
                    queue.settle(ids, Outcome::Requeue).await?;
                }
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            _ => self.close_channel(id, NOT_IMPLEMENTED, "method not supported yet", 60, 0),
        }
        Ok(Next::Continue)
    }

    pub(super) async fn on_tx(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        method: tx::AMQPMethod,
    ) -> Result<(), CoreError> {
        let reply = match method {
            tx::AMQPMethod::Select(_) => {
                let channel = self
                    .channels
                    .get_mut(&id)
                    .expect("methods reach only open channels");
                if channel.confirms.is_some() {
                    return Err(CoreError::PreconditionFailed {
                        reason: "a channel in confirm mode cannot be made transactional".to_owned(),
                    });
                }
                channel.transaction.get_or_insert_with(Pending::default);
                self.listed
                    .describe_channel(id, |channel| channel.transactional = true);
                tx::AMQPMethod::SelectOk(tx::SelectOk {})
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(pending) = self
                    .channels
                    .get_mut(&id)
                    .and_then(|channel| channel.transaction.replace(Pending::default()))
                else {
                    return Err(CoreError::PreconditionFailed {
                        reason: "channel is not transactional".to_owned(),
                    });
                };
                self.commit(host, id, pending).await?;
                tx::AMQPMethod::CommitOk(tx::CommitOk {})
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(transaction) = self
                    .channels
                    .get_mut(&id)
                    .and_then(|channel| channel.transaction.as_mut())
                else {
                    return Err(CoreError::PreconditionFailed {
                        reason: "channel is not transactional".to_owned(),
                    });
                };
                *transaction = Pending::default();
                tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
            }
            _ => {
                self.close_channel(
                    id,
                    COMMAND_INVALID,
                    "a client cannot send this method",
                    90,
                    0,
                );
                return Ok(());
            }
        };
        self.send(id, AMQPClass::Tx(reply));
        Ok(())
    }

    /// Applies a channel's transaction through the core (all or nothing); unroutable mandatory
    /// messages are returned once it is committed.
    pub(super) async fn commit(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        pending: Pending,
    ) -> Result<(), CoreError> {
        let mut transaction = host.begin();
        let tags = Arc::clone(&self.channel(id).tags);
        for (tag, multiple, outcome) in pending.settles {
            let groups = lock(&tags)
                .take(tag, multiple)
                .map_err(|tag| CoreError::UnknownDelivery { delivery: tag })?;
            for (queue, ids) in groups {
                transaction.settle(queue.name(), ids, outcome);
            }
        }
        let mut mandatory = Vec::new();
        for (exchange, routing_key, is_mandatory, message) in pending.publishes {
            mandatory.push(
                is_mandatory.then(|| (exchange.clone(), routing_key.clone(), message.clone())),
            );
            transaction.publish(&exchange, &routing_key, message);
        }
        let committed = transaction.commit().await?;
        for (routed, returned) in committed.routed.iter().zip(mandatory) {
            if let (0, Some((exchange, routing_key, message))) = (routed, returned) {
                self.return_unroutable(id, &exchange, &routing_key, &message);
            }
        }
        Ok(())
    }

    pub(super) fn channel(&self, id: u16) -> &Channel {
        self.channels
            .get(&id)
            .expect("methods reach only open channels")
    }

    /// The prefetch size a `basic.qos` on an open channel asks for, when it is not 0 (RabbitMQ
    /// answers one with 540 NOT_IMPLEMENTED, a connection error). `raw` is the whole frame.
    pub(super) fn prefetch_size_asked(&self, frame: &AMQPFrame, raw: &[u8]) -> Option<u32> {
        let AMQPFrame::Method(id, AMQPClass::Basic(basic::AMQPMethod::Qos(_))) = frame else {
            return None;
        };
        if self.channels.get(id).is_none_or(|channel| channel.closing) {
            return None;
        }
        // The header (7 bytes), class and method ids (4), then prefetch-size.
        let size = u32::from_be_bytes(raw.get(11..15)?.try_into().ok()?);
        (size != 0).then_some(size)
    }

    /// The confirm task of channel `id`, which is in confirm mode.
    fn confirms(&self, id: u16) -> &Confirms {
        self.channel(id)
            .confirms
            .as_ref()
            .expect("sequences are numbered only in confirm mode")
    }

    /// The channel's shared prefetch (`basic.qos` with `global`), 0 for none.
    fn channel_prefetch(&self, id: u16) -> u16 {
        lock(&self.channel(id).tags).channel_credit.limit()
    }

    pub(super) async fn consume(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        consume: basic::Consume,
    ) -> Result<(), CoreError> {
        if consume.queue.as_str() == super::reply_to::REPLY_TO {
            return self.consume_replies(id, &consume);
        }
        self.authorize(host, Action::Read, "queue", consume.queue.as_str())?;
        let stream = host.stream(consume.queue.as_str());
        let queue = match stream {
            Some(_) => None,
            None => Some(host.queue_for(consume.queue.as_str(), Some(self.connection))?),
        };
        self.next_consumer += 1;
        let consumer_id = (self.connection << 32) | self.next_consumer;
        let mut tag = consume.consumer_tag.as_str().to_owned();
        if tag.is_empty() {
            tag = format!("amq.ctag-{}-{}", self.connection, self.next_consumer);
        }
        if self.channel(id).consumers.contains_key(&tag) {
            return Err(CoreError::PreconditionFailed {
                reason: format!("consumer tag '{tag}' is in use on this channel"),
            });
        }
        let Some(queue) = queue else {
            let stream = stream.expect("a stream when not a queue");
            return self.consume_stream(id, consume, stream, tag).await;
        };
        let arguments = headers_from_table(&consume.arguments);
        let filter = postino_core::topology::filter_argument(&arguments)?;
        let priority = match arguments.get("x-priority") {
            Some(postino_types::HeaderValue::Int(priority)) => {
                i32::try_from(*priority).unwrap_or(0)
            }
            _ => 0,
        };
        // The core holds at most this many deliveries for the consumer: its own prefetch, and
        // never more than the channel's shared one.
        let prefetch = match (self.channel(id).prefetch, self.channel_prefetch(id)) {
            (0, shared) => shared,
            (own, 0) => own,
            (own, shared) => own.min(shared),
        };
        let spec = ConsumerSpec {
            prefetch_count: u32::from(prefetch),
            auto_ack: consume.no_ack,
            priority,
            filter,
            window: CONSUMER_WINDOW,
            ..ConsumerSpec::default()
        };
        let mut deliveries = queue.consume(consumer_id, spec).await?;
        self.reply_unless_nowait(
            consume.nowait,
            id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        );
        let tags = Arc::clone(&self.channel(id).tags);
        let credit = Arc::clone(&lock(&tags).channel_credit);
        let (out, frame_max, no_ack) = (self.out.clone(), self.frame_max, consume.no_ack);
        let forward_queue = queue.clone();
        let forward_tag = short(&tag);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forward_ended = Arc::clone(&ended);
        let mut flow = self.channel(id).flow.0.subscribe();
        self.list_consumer(id, &tag, &consume);
        let listed = Arc::clone(&self.listed);
        let forwarder = tokio::spawn(async move {
            let mut written = 0;
            while let Some(delivery) = deliveries.recv().await {
                flow_allows(&mut flow).await;
                // A client that does not read holds the forwarder here, and through the
                // window the queue's owner: its backlog stays in the queue.
                out.room().await;
                let delivery_tag = if no_ack {
                    0
                } else {
                    credit.acquire().await;
                    lock(&tags).assign_credited(&forward_queue, delivery.id)
                };
                let annotations = &delivery.message.annotations;
                let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: forward_tag.clone(),
                    delivery_tag,
                    redelivered: annotations.redelivered,
                    exchange: short(&annotations.exchange),
                    routing_key: short(&annotations.routing_key),
                }));
                send_content(&out, id, method, &delivery.message, frame_max);
                written += 1;
                if written >= CONSUMER_WINDOW / 4 || deliveries.is_empty() {
                    let _ = forward_queue.written(consumer_id, written).await;
                    written = 0;
                }
            }
            // The queue's owner stopped (the queue was deleted): tell the client, as RabbitMQ
            // does for clients with `consumer_cancel_notify`, unless the client or its channel
            // ended the consumer.
            if forward_ended.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            listed.describe_channel(id, |channel| {
                channel.consumers.remove(forward_tag.as_str());
            });
            let cancel = basic::Cancel {
                consumer_tag: forward_tag,
                nowait: true,
            };
            let _ = out.send(AMQPFrame::Method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)),
            ));
        });
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.consumers.insert(
                tag,
                Consumer {
                    queue: Some((queue, consumer_id)),
                    forwarder,
                    auto_ack: no_ack,
                    ended,
                },
            );
        }
        Ok(())
    }

    pub(super) async fn settle(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        outcome: Outcome,
    ) -> Result<(), CoreError> {
        if let Some(pending) = self
            .channels
            .get_mut(&id)
            .and_then(|channel| channel.transaction.as_mut())
        {
            pending.settles.push((tag, multiple, outcome));
            return Ok(());
        }
        let groups = lock(&self.channel(id).tags)
            .take(tag, multiple)
            .map_err(|tag| CoreError::UnknownDelivery { delivery: tag })?;
        for (queue, ids) in groups {
            // Acks are pipelined (the tag table above already refused unknown tags); a
            // requeue or discard waits, so its errors reach the client.
            let settled = if outcome == Outcome::Accept {
                queue.settle_pipelined(ids, outcome).await
            } else {
                queue.settle(ids, outcome).await
            };
            match settled {
                // The queue was deleted since the delivery: nothing is left to settle, and
                // RabbitMQ takes such acks without an error too.
                Ok(()) | Err(CoreError::QueueStopped { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub(super) async fn on_header(&mut self, id: u16, header: AMQPContentHeader) -> Next {
        let body_max = self.limits.body_bytes_max;
        let Some(channel) = self.channels.get_mut(&id) else {
            self.close_connection(CHANNEL_ERROR, &format!("channel {id} is not open"));
            return Next::Stop;
        };
        if channel.closing {
            return Next::Continue;
        }
        let Some(incoming) = channel
            .incoming
            .as_mut()
            .filter(|incoming| incoming.header.is_none())
        else {
            self.close_connection(UNEXPECTED_FRAME, "content header without basic.publish");
            return Next::Stop;
        };
        if header.body_size > body_max {
            self.close_channel(
                id,
                CONTENT_TOO_LARGE,
                "message body exceeds the limit",
                60,
                40,
            );
            return Next::Continue;
        }
        let complete = header.body_size == 0;
        incoming.body.reserve(header.body_size as usize);
        incoming.header = Some(header);
        if complete {
            return self.publish(id).await;
        }
        Next::Continue
    }

    pub(super) async fn on_body(&mut self, id: u16, body: Vec<u8>) -> Next {
        let Some(channel) = self.channels.get_mut(&id) else {
            self.close_connection(CHANNEL_ERROR, &format!("channel {id} is not open"));
            return Next::Stop;
        };
        if channel.closing {
            return Next::Continue;
        }
        let Some(incoming) = channel
            .incoming
            .as_mut()
            .filter(|incoming| incoming.header.is_some())
        else {
            self.close_connection(UNEXPECTED_FRAME, "content body without a header");
            return Next::Stop;
        };
        incoming.body.extend_from_slice(&body);
        let expected = incoming
            .header
            .as_ref()
            .map_or(0, |header| header.body_size);
        match (incoming.body.len() as u64).cmp(&expected) {
            std::cmp::Ordering::Less => Next::Continue,
            std::cmp::Ordering::Equal => self.publish(id).await,
            std::cmp::Ordering::Greater => {
                self.close_connection(FRAME_ERROR, "content body longer than its header said");
                Next::Stop
            }
        }
    }

    /// Publishes a completed message; in confirm mode, acks (or nacks) it once the core
    /// confirms it, and returns it first when it was mandatory and unroutable.
    pub(super) async fn publish(&mut self, id: u16) -> Next {
        let Some(host) = self.host.clone() else {
            return Next::Stop;
        };
        let Some(channel) = self.channels.get_mut(&id) else {
            return Next::Stop;
        };
        let Some(incoming) = channel.incoming.take() else {
            return Next::Continue;
        };
        let sequence = channel.confirms.as_mut().map(Confirms::next_sequence);
        let Incoming {
            exchange,
            routing_key,
            mandatory,
            header,
            body,
        } = incoming;
        let properties = header
            .map(|header| properties_from_amqp(&header.properties))
            .unwrap_or_default();
        let message = Message {
            body: body.into(),
            properties,
            annotations: postino_types::Annotations::default(),
        };
        let message = match self.route_reply(id, &exchange, &routing_key, mandatory, message) {
            Ok(Some(message)) => message,
            Ok(None) => {
                // A direct reply is delivered, not stored: confirmed at once.
                if let Some(sequence) = sequence {
                    self.confirms(id).decided(sequence, true);
                }
                return Next::Continue;
            }
            Err(error) => return self.fail(id, &error, 60, 40),
        };
        if let Some(pending) = self
            .channels
            .get_mut(&id)
            .and_then(|channel| channel.transaction.as_mut())
        {
            pending
                .publishes
                .push((exchange, routing_key, mandatory, message));
            return Next::Continue;
        }
        let returned = mandatory.then(|| message.clone());
        let arrived = std::time::Instant::now();
        match host
            .publish_pipelined(&exchange, &routing_key, message)
            .await
        {
            Ok((routed, confirm)) => {
                if let (0, Some(message)) = (routed.queues, returned) {
                    self.return_unroutable(id, &exchange, &routing_key, &message);
                }
                if let Some(sequence) = sequence {
                    self.confirms(id).stored(sequence, confirm, arrived);
                }
                Next::Continue
            }
            Err(error) => match (sequence, &error) {
                (Some(sequence), CoreError::PublishRejected { .. }) => {
                    self.confirms(id).decided(sequence, false);
                    Next::Continue
                }
                _ => self.fail(id, &error, 60, 40),
            },
        }
    }
}
