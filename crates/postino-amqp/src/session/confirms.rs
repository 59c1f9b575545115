//! Publisher confirms of one channel in confirm mode: answered in publish order by one task,
//! and coalesced into one `basic.ack` with `multiple` for every run of publishes that became
//! durable together (a group commit confirms hundreds at once), as RabbitMQ does.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic};
use futures_lite::future::poll_once;
use postino_core::{Broker, Confirm};
use tokio::sync::mpsc;

use super::Out;

/// What one publish's confirm waits for.
enum Awaited {
    /// The core's confirm of a stored publish, and when the publish arrived.
    Stored(Confirm, Instant),
    /// Decided already: `true` is an ack (a direct reply), `false` a nack (a refused publish).
    Decided(bool),
}

/// The sending side of a channel's confirm task; the task ends when this is dropped, after
/// answering what it was given.
#[derive(Debug)]
pub(super) struct Confirms {
    sequences: mpsc::UnboundedSender<(u64, Awaited)>,
    published: u64,
}

impl std::fmt::Debug for Awaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stored(..) => "Stored",
            Self::Decided(true) => "Ack",
            Self::Decided(false) => "Nack",
        })
    }
}

impl Confirms {
    /// Starts the confirm task of channel `channel`, writing to `out`.
    pub(super) fn start(channel: u16, out: Out, broker: Arc<Broker>) -> Self {
        let (sequences, received) = mpsc::unbounded_channel();
        tokio::spawn(answer(channel, out, broker, received));
        Self {
            sequences,
            published: 0,
        }
    }

    /// The next publish's sequence number (its delivery tag in the ack).
    pub(super) fn next_sequence(&mut self) -> u64 {
        self.published += 1;
        self.published
    }

    /// Acks `sequence` once `confirm` resolves, or nacks it if the core fails it.
    pub(super) fn stored(&self, sequence: u64, confirm: Confirm, arrived: Instant) {
        let _ = self
            .sequences
            .send((sequence, Awaited::Stored(confirm, arrived)));
    }

    /// Acks (`true`) or nacks `sequence` in its turn.
    pub(super) fn decided(&self, sequence: u64, ack: bool) {
        let _ = self.sequences.send((sequence, Awaited::Decided(ack)));
    }
}

/// Acks not sent yet: the highest sequence of a run of acks and how many the run holds.
#[derive(Default)]
struct Run {
    last: u64,
    count: u64,
}

impl Run {
    fn push(&mut self, sequence: u64) {
        self.last = sequence;
        self.count += 1;
    }

    /// Sends the run as one ack (`multiple` when it holds more than one).
    fn flush(&mut self, out: &Out, channel: u16) {
        if self.count > 0 {
            send(
                out,
                channel,
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: self.last,
                    multiple: self.count > 1,
                }),
            );
            self.count = 0;
        }
    }
}

fn send(out: &Out, channel: u16, method: basic::AMQPMethod) {
    let _ = out.send(AMQPFrame::Method(channel, AMQPClass::Basic(method)));
}

/// Answers the channel's publishes in order. A run of acks is sent when the next answer is
/// not ready yet, or is a nack, so a client never waits on an ack the broker holds back.
async fn answer(
    channel: u16,
    out: Out,
    broker: Arc<Broker>,
    mut received: mpsc::UnboundedReceiver<(u64, Awaited)>,
) {
    let mut run = Run::default();
    loop {
        let (sequence, awaited) = match received.try_recv() {
            Ok(next) => next,
            Err(_) => {
                run.flush(&out, channel);
                match received.recv().await {
                    Some(next) => next,
                    None => return,
                }
            }
        };
        let acked = match awaited {
            Awaited::Decided(ack) => ack,
            Awaited::Stored(confirm, arrived) => {
                let mut waiting = pin!(confirm.wait());
                let outcome = match poll_once(waiting.as_mut()).await {
                    Some(outcome) => outcome,
                    None => {
                        run.flush(&out, channel);
                        waiting.await
                    }
                };
                broker
                    .connections()
                    .confirm_latency()
                    .record(arrived.elapsed());
                outcome.is_ok()
            }
        };
        if acked {
            run.push(sequence);
        } else {
            run.flush(&out, channel);
            send(
                &out,
                channel,
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: sequence,
                    multiple: false,
                    requeue: false,
                }),
            );
        }
    }
}
