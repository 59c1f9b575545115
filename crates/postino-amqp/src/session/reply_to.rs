//! RabbitMQ's direct reply-to: a client consumes the pseudo-queue `amq.rabbitmq.reply-to` in
//! no-ack mode and publishes requests with that name as `reply_to`; the broker rewrites it to
//! `amq.rabbitmq.reply-to.<token>`, and a reply published to the default exchange with that
//! routing key goes straight to the consumer's channel, through no queue. A reply whose
//! consumer is gone is dropped (returned when mandatory), as with RabbitMQ.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::ShortString;
use postino_core::CoreError;
use postino_types::Message;

use super::{Out, Session, send_content, short};

/// The pseudo-queue name.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// What a rewritten `reply_to` starts with; the token follows.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The token in a reply's routing key, if it is a direct reply-to address.
pub(crate) fn token_of<'a>(exchange: &str, routing_key: &'a str) -> Option<&'a str> {
    if exchange.is_empty() {
        routing_key.strip_prefix(REPLY_TO_PREFIX)
    } else {
        None
    }
}

/// The address replies to `token` are published to.
pub(crate) fn address_of(token: &str) -> String {
    format!("{REPLY_TO_PREFIX}{token}")
}

#[derive(Debug, Clone)]
struct ReplyConsumer {
    out: Out,
    channel: u16,
    tag: ShortString,
    frame_max: u32,
}

/// Every direct reply-to consumer of a listener, by token.
#[derive(Debug, Default)]
pub(crate) struct ReplyConsumers {
    consumers: Mutex<HashMap<String, ReplyConsumer>>,
}

impl ReplyConsumers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplyConsumer>> {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replies to `token` go to consumer `tag` of `channel` on `out` from now on.
    pub(crate) fn register(&self, token: &str, out: &Out, channel: u16, tag: &str, frame_max: u32) {
        self.lock().insert(
            token.to_owned(),
            ReplyConsumer {
                out: out.clone(),
                channel,
                tag: short(tag),
                frame_max,
            },
        );
    }

    /// The consumer of `token` is gone.
    pub(crate) fn unregister(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Delivers a reply; `false` when nobody consumes `token` any more.
    pub(crate) fn deliver(&self, token: &str, routing_key: &str, message: &Message) -> bool {
        let Some(consumer) = self.lock().get(token).cloned() else {
            return false;
        };
        let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: consumer.tag,
            delivery_tag: 0,
            redelivered: false,
            exchange: short(""),
            routing_key: short(routing_key),
        }));
        send_content(
            &consumer.out,
            consumer.channel,
            method,
            message,
            consumer.frame_max,
        );
        true
    }
}

impl Session {
    /// `basic.consume` on `amq.rabbitmq.reply-to`: the channel's reply consumer, no-ack only.
    pub(super) fn consume_replies(
        &mut self,
        id: u16,
        consume: &basic::Consume,
    ) -> Result<(), CoreError> {
        if !consume.no_ack {
            return Err(CoreError::PreconditionFailed {
                reason: "a direct reply-to consumer must be no-ack".to_owned(),
            });
        }
        if self.channel(id).reply_consumer.is_some() {
            return Err(CoreError::PreconditionFailed {
                reason: "the channel already consumes its direct replies".to_owned(),
            });
        }
        self.next_consumer += 1;
        let mut tag = consume.consumer_tag.as_str().to_owned();
        if tag.is_empty() {
            tag = format!("amq.ctag-{}-{}", self.connection, self.next_consumer);
        }
        let token = format!("{}.{id}.{}", self.connection, self.next_consumer);
        self.replies
            .register(&token, &self.out, id, &tag, self.frame_max);
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.reply_consumer = Some((tag.clone(), token));
        }
        self.reply_unless_nowait(
            consume.nowait,
            id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        );
        Ok(())
    }

    /// Ends the channel's reply consumer if `tag` names it; returns whether it did.
    pub(super) fn cancel_replies(&mut self, id: u16, tag: &str) -> bool {
        let Some(channel) = self.channels.get_mut(&id) else {
            return false;
        };
        if channel
            .reply_consumer
            .as_ref()
            .is_none_or(|(own, _)| own != tag)
        {
            return false;
        }
        if let Some((_, token)) = channel.reply_consumer.take() {
            self.replies.unregister(&token);
        }
        true
    }

    /// Handles direct reply-to on publish: a request asking for replies gets its channel's
    /// address as `reply_to`; a reply goes straight to its consumer (`None`: nothing is left
    /// to route; returned first when mandatory and its consumer is gone).
    ///
    /// # Errors
    /// `PreconditionFailed` for a request on a channel without a reply consumer.
    pub(super) fn route_reply(
        &mut self,
        id: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        mut message: Message,
    ) -> Result<Option<Message>, CoreError> {
        if let Some(token) = token_of(exchange, routing_key) {
            if !self.replies.deliver(token, routing_key, &message) && mandatory {
                self.return_unroutable(id, exchange, routing_key, &message);
            }
            return Ok(None);
        }
        if message.properties.reply_to.as_deref() == Some(REPLY_TO) {
            let Some((_, token)) = &self.channel(id).reply_consumer else {
                return Err(CoreError::PreconditionFailed {
                    reason: "fast reply consumer does not exist".to_owned(),
                });
            };
            message.properties.reply_to = Some(address_of(token));
        }
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_exchange_carries_replies() {
        let address = address_of("7.1.3");
        assert_eq!(token_of("", &address), Some("7.1.3"));
        assert_eq!(token_of("amq.direct", &address), None);
        assert_eq!(token_of("", REPLY_TO), None);
    }

    #[test]
    fn a_reply_reaches_its_consumer_until_it_is_gone() {
        let consumers = ReplyConsumers::default();
        let (out, mut frames) = super::super::Out::channel();
        consumers.register("t", &out, 3, "ctag", 4096);
        assert!(consumers.deliver("t", &address_of("t"), &Message::new(&b"pong"[..])));
        assert!(matches!(
            frames.try_recv(),
            Ok(amq_protocol::frame::AMQPFrame::Method(3, _))
        ));
        consumers.unregister("t");
        assert!(!consumers.deliver("t", &address_of("t"), &Message::new(&b"late"[..])));
    }
}
