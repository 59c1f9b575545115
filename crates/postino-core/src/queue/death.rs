//! Dead-lettering: what a dying message becomes, and where it goes.

use postino_types::{Death, DeathReason, Message};

use crate::options::QueueOptions;

/// A message that died in a queue, to be published to the queue's dead-letter exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub exchange: String,
    pub routing_key: String,
    pub message: Message,
}

/// The dead letter of `message` dying in `queue` for `reason`, or `None` when the queue has no
/// dead-letter exchange (the message is dropped). As RabbitMQ does, the death history gets an
/// entry per (queue, reason) with a count, most recent first, and a per-message expiration is
/// removed so that the message does not expire again at once.
pub(crate) fn dead_letter(
    mut message: Message,
    queue: &str,
    reason: DeathReason,
    options: &QueueOptions,
    now_ms: i64,
) -> Option<DeadLetter> {
    let exchange = options.dead_letter_exchange.clone()?;
    let annotations = &mut message.annotations;
    let original_key = annotations.routing_key.clone();
    let known = annotations
        .deaths
        .iter()
        .position(|death| death.queue == queue && death.reason == reason);
    let death = match known {
        Some(index) => {
            let mut death = annotations.deaths.remove(index);
            death.count += 1;
            death.time_ms = now_ms;
            death
        }
        None => Death {
            queue: queue.to_owned(),
            reason,
            exchange: annotations.exchange.clone(),
            routing_keys: vec![original_key.clone()],
            count: 1,
            time_ms: now_ms,
        },
    };
    annotations.deaths.insert(0, death);
    annotations.redelivered = false;
    annotations.delivery_count = 0;
    message.properties.expiration_ms = None;
    let routing_key = options
        .dead_letter_routing_key
        .clone()
        .unwrap_or(original_key);
    Some(DeadLetter {
        exchange,
        routing_key,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> QueueOptions {
        QueueOptions {
            dead_letter_exchange: Some("dlx".into()),
            ..QueueOptions::default()
        }
    }

    #[test]
    fn deaths_are_counted_per_queue_and_reason_most_recent_first() {
        let mut message = Message::new(&b"m"[..]);
        message.annotations.exchange = "orders".into();
        message.annotations.routing_key = "new".into();
        message.properties.expiration_ms = Some(5);
        let first = dead_letter(message, "q1", DeathReason::Expired, &options(), 10).expect("dlx");
        assert_eq!(
            (first.exchange.as_str(), first.routing_key.as_str()),
            ("dlx", "new")
        );
        assert_eq!(first.message.properties.expiration_ms, None);
        let second =
            dead_letter(first.message, "q2", DeathReason::Rejected, &options(), 20).expect("dlx");
        let third =
            dead_letter(second.message, "q1", DeathReason::Expired, &options(), 30).expect("dlx");
        let deaths = &third.message.annotations.deaths;
        assert_eq!(deaths.len(), 2);
        assert_eq!(
            (deaths[0].queue.as_str(), deaths[0].count, deaths[0].time_ms),
            ("q1", 2, 30)
        );
        assert_eq!(deaths[0].exchange, "orders");
        assert_eq!(deaths[1].reason, DeathReason::Rejected);
    }

    #[test]
    fn without_a_dead_letter_exchange_the_message_is_dropped() {
        let dropped = dead_letter(
            Message::new(&b"m"[..]),
            "q",
            DeathReason::MaxLength,
            &QueueOptions::default(),
            0,
        );
        assert!(dropped.is_none());
        let mut options = options();
        options.dead_letter_routing_key = Some("dead".into());
        let routed = dead_letter(
            Message::new(&b"m"[..]),
            "q",
            DeathReason::MaxLength,
            &options,
            0,
        )
        .expect("dlx");
        assert_eq!(routed.routing_key, "dead");
    }
}
