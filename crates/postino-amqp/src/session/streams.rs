//! RabbitMQ's stream queues over postino's streams: `queue.declare` with
//! `x-queue-type: stream` declares a one-partition stream (durable, not exclusive, not
//! auto-delete, as RabbitMQ requires), publishing reaches it through exchanges as to any queue,
//! and `basic.consume` reads it from `x-stream-offset` without removing anything. Stream
//! consumers must set a prefetch and acknowledge, as with RabbitMQ; an ack (or nack) only gives
//! credit back. Each delivery carries its offset in the `x-stream-offset` header.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use postino_core::stream::{parse_age, records_of};
use postino_core::{CoreError, FetchSpec, OnOutOfRange, StartAt, Stream, StreamSpec, VirtualHost};
use postino_types::{Clock, HeaderValue, Headers, Message, SystemClock};

use super::{Consumer, Session, flow_allows, lock, send_content, short};

/// How long a stream reader's fetch waits for new records before asking again.
const FETCH_WAIT: Duration = Duration::from_millis(500);

fn invalid(name: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Where a stream consumer starts, from its `x-stream-offset` argument (default `next`).
fn start_of(arguments: &Headers, now_ms: i64) -> Result<StartAt, CoreError> {
    const NAME: &str = "x-stream-offset";
    Ok(match arguments.get(NAME) {
        None => StartAt::Latest,
        Some(HeaderValue::Text(text)) => match text.as_str() {
            "first" => StartAt::Earliest,
            "next" => StartAt::Latest,
            // RabbitMQ starts at the last chunk; postino at the last record.
            "last" => StartAt::Timestamp(i64::MAX),
            interval => {
                let back = parse_age(NAME, interval)?;
                StartAt::Timestamp(now_ms.saturating_sub(back.as_millis() as i64))
            }
        },
        Some(HeaderValue::Int(offset)) => StartAt::Offset(u64::try_from(*offset).unwrap_or(0)),
        Some(HeaderValue::Timestamp(millis)) => StartAt::Timestamp(*millis),
        Some(_) => {
            return Err(invalid(
                NAME,
                "must be first, last, next, an offset, a timestamp or an interval",
            ));
        }
    })
}

impl Session {
    /// Records in a stream queue, for `declare-ok` and `delete-ok`.
    pub(super) async fn stream_depth(stream: &Stream) -> Result<u32, CoreError> {
        let stats = stream.partition(0)?.stats().await?;
        Ok((stats.next - stats.earliest).min(u64::from(u32::MAX)) as u32)
    }

    /// `basic.consume` on a stream queue: a task reads the stream from the consumer's start
    /// and delivers each record while the consumer has credit.
    pub(super) async fn consume_stream(
        &mut self,
        id: u16,
        consume: basic::Consume,
        stream: Arc<Stream>,
        tag: String,
    ) -> Result<(), CoreError> {
        let prefetch = self.channel(id).prefetch;
        if prefetch == 0 || consume.no_ack {
            return Err(CoreError::PreconditionFailed {
                reason: "stream consumers need a prefetch (basic.qos) and manual acks".to_owned(),
            });
        }
        let arguments = crate::convert::headers_from_table(&consume.arguments);
        let partition = stream.partition(0)?;
        let start = match start_of(&arguments, SystemClock.now_ms())? {
            StartAt::Timestamp(i64::MAX) => {
                partition.resolve(StartAt::Latest).await?.saturating_sub(1)
            }
            StartAt::Offset(offset) => {
                let earliest = partition.resolve(StartAt::Earliest).await?;
                let latest = partition.resolve(StartAt::Latest).await?;
                offset.clamp(earliest, latest)
            }
            other => partition.resolve(other).await?,
        };
        self.reply_unless_nowait(
            consume.nowait,
            id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        );
        self.list_consumer(id, &tag, &consume);
        let credit = Arc::new(tokio::sync::Semaphore::new(usize::from(prefetch)));
        let tags = Arc::clone(&self.channel(id).tags);
        let (out, frame_max) = (self.out.clone(), self.frame_max);
        let ended = Arc::new(AtomicBool::new(false));
        let reader_ended = Arc::clone(&ended);
        let consumer_tag = short(&tag);
        let mut flow = self.channel(id).flow.0.subscribe();
        let forwarder = tokio::spawn(async move {
            let mut at = start;
            loop {
                let spec = FetchSpec {
                    on_out_of_range: OnOutOfRange::Earliest,
                    ..FetchSpec::at(at).waiting(FETCH_WAIT)
                };
                let Ok(fetched) = partition.fetch(spec).await else {
                    break;
                };
                let next = fetched.next_offset();
                let Ok(records) = records_of(&fetched) else {
                    // A batch postino cannot decode (compressed by a Kafka client): skip it.
                    at = next;
                    continue;
                };
                for record in records {
                    let Ok(permit) = credit.acquire().await else {
                        return;
                    };
                    permit.forget();
                    flow_allows(&mut flow).await;
                    let mut message = postino_core::record::decode(&record)
                        .unwrap_or_else(|_| Message::new(record.value.clone().unwrap_or_default()));
                    message.properties.headers.insert(
                        "x-stream-offset".to_owned(),
                        HeaderValue::Int(record.offset as i64),
                    );
                    let delivery_tag = lock(&tags).assign_stream(&credit);
                    let annotations = &message.annotations;
                    let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: consumer_tag.clone(),
                        delivery_tag,
                        redelivered: false,
                        exchange: short(&annotations.exchange),
                        routing_key: short(&annotations.routing_key),
                    }));
                    send_content(&out, id, method, &message, frame_max);
                }
                at = next;
            }
            // The stream was deleted: tell the client, unless it ended the consumer itself.
            if !reader_ended.load(Ordering::Acquire) {
                let cancel = basic::Cancel {
                    consumer_tag,
                    nowait: true,
                };
                let _ = out.send(amq_protocol::frame::AMQPFrame::Method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)),
                ));
            }
        });
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.consumers.insert(
                tag,
                Consumer {
                    queue: None,
                    forwarder,
                    auto_ack: false,
                    ended,
                },
            );
        }
        Ok(())
    }

    /// Declares a stream queue (or checks it, passively); returns its depth.
    pub(super) async fn declare_stream(
        host: &VirtualHost,
        name: &str,
        spec: StreamSpec,
    ) -> Result<u32, CoreError> {
        let (stream, _) = host.declare_stream(name, spec)?;
        Self::stream_depth(&stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(pairs: &[(&str, HeaderValue)]) -> Headers {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    #[test]
    fn offsets_name_where_a_consumer_starts() {
        let at =
            |value: HeaderValue| start_of(&arguments(&[("x-stream-offset", value)]), 10_000_000);
        assert_eq!(
            at(HeaderValue::Text("first".into())).ok(),
            Some(StartAt::Earliest)
        );
        assert_eq!(
            at(HeaderValue::Text("next".into())).ok(),
            Some(StartAt::Latest)
        );
        assert_eq!(at(HeaderValue::Int(42)).ok(), Some(StartAt::Offset(42)));
        assert_eq!(
            at(HeaderValue::Timestamp(5_000)).ok(),
            Some(StartAt::Timestamp(5_000))
        );
        assert_eq!(
            at(HeaderValue::Text("1h".into())).ok(),
            Some(StartAt::Timestamp(10_000_000 - 3_600_000))
        );
        assert!(at(HeaderValue::Bool(true)).is_err());
        assert_eq!(start_of(&Headers::new(), 0).ok(), Some(StartAt::Latest));
    }
}
