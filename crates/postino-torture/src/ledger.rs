//! The independent record of what the clients saw — publishes and their confirmations,
//! deliveries, committed settlements, stream positions — and the checks made from it alone
//! (nothing is asked of the broker but messages).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::body::Id;

/// A publish's outcome as its publisher saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Sent; no answer came before the server died (it may or may not be stored).
    Unknown,
    /// Confirmed: it must never be lost.
    Confirmed,
    /// Refused by the broker.
    Refused,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Each publish to a queue: its queue and outcome.
    publishes: HashMap<Id, (String, Outcome)>,
    /// How many times each publish was delivered.
    deliveries: HashMap<Id, u64>,
    /// Per queue and publisher, the sequence numbers in the order of their first delivery.
    first_deliveries: BTreeMap<(String, u32), Vec<u64>>,
    /// Settlements a committed transaction made: these must never come back.
    committed: HashSet<Id>,
    /// Stream records confirmed at a position, and the key's producer order.
    records: BTreeMap<(u32, u64), Id>,
    /// Publishes answered so far per queue: confirmed, refused.
    answers: HashMap<String, (u64, u64)>,
    /// Deliveries so far per queue.
    delivered_to: HashMap<String, u64>,
    /// Streams with a retention limit: their oldest records may go, never one in the middle.
    retained: HashSet<String>,
    /// Queues where a refusal leaves the outcome unknown (a failed sync: the bytes may be on
    /// disk all the same).
    uncertain: HashSet<String>,
    /// Violations seen as they happened.
    corrupt: u64,
    resurrected: u64,
    misplaced_records: u64,
}

/// What a run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub confirmed: u64,
    pub unknown: u64,
    pub unknown_present: u64,
    pub refused: u64,
    /// Refused publishes that were delivered all the same: a refusal must mean "not stored".
    pub refused_present: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Deliveries again of a message whose plain ack may not have reached the broker: what
    /// at-least-once allows.
    pub redelivered: u64,
    /// Deliveries again of a message a committed transaction had settled: violations.
    pub resurrected: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub records_confirmed: u64,
    pub records_lost: u64,
    pub records_misplaced: u64,
    /// Confirmed publishes to retained streams: deleted by retention (older than every record
    /// of their publisher still there), and missing among later ones (violations).
    pub retained_confirmed: u64,
    pub retained_deleted: u64,
    pub retained_lost: u64,
}

impl Report {
    /// Whether any promise was broken.
    pub fn violations(&self) -> u64 {
        self.lost
            + self.refused_present
            + self.resurrected
            + self.out_of_order
            + self.corrupt
            + self.records_lost
            + self.records_misplaced
            + self.retained_lost
    }
}

impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            out,
            "confirmed {} (lost {}), unknown outcome {} ({} present), refused {} ({} present), \
             delivered {} (redelivered as at-least-once allows {}, after a committed ack {}), \
             out of order {}, corrupt {}; stream records confirmed {} (lost {}, misplaced {}); \
             retained stream confirmed {} (deleted by retention {}, lost {})",
            self.confirmed,
            self.lost,
            self.unknown,
            self.unknown_present,
            self.refused,
            self.refused_present,
            self.delivered,
            self.redelivered,
            self.resurrected,
            self.out_of_order,
            self.corrupt,
            self.records_confirmed,
            self.records_lost,
            self.records_misplaced,
            self.retained_confirmed,
            self.retained_deleted,
            self.retained_lost,
        )
    }
}

impl Ledger {
    /// A publish to `queue` was sent.
    pub fn sent(&mut self, id: Id, queue: &str) {
        self.publishes
            .insert(id, (queue.to_owned(), Outcome::Unknown));
    }

    /// The broker confirmed (`true`) or refused a publish.
    pub fn answered(&mut self, id: Id, confirmed: bool) {
        if let Some((queue, outcome)) = self.publishes.get_mut(&id) {
            let answers = self.answers.entry(queue.clone()).or_default();
            if confirmed {
                answers.0 += 1;
                *outcome = Outcome::Confirmed;
            } else {
                answers.1 += 1;
                if !self.uncertain.contains(queue.as_str()) {
                    *outcome = Outcome::Refused;
                }
            }
        }
    }

    /// `stream` (published to as a queue) has a retention limit.
    pub fn retained(&mut self, stream: &str) {
        self.retained.insert(stream.to_owned());
    }

    /// Refusals from `queue` leave the outcome unknown from now on.
    pub fn uncertain(&mut self, queue: &str) {
        self.uncertain.insert(queue.to_owned());
    }

    /// Publishes confirmed and refused so far.
    pub fn answers(&self) -> (u64, u64) {
        self.answers.values().fold((0, 0), |sum, answers| {
            (sum.0 + answers.0, sum.1 + answers.1)
        })
    }

    /// Publishes to `queue` confirmed and refused so far.
    pub fn answers_for(&self, queue: &str) -> (u64, u64) {
        self.answers.get(queue).copied().unwrap_or_default()
    }

    /// Deliveries from `queue` so far.
    pub fn delivered_from(&self, queue: &str) -> u64 {
        self.delivered_to.get(queue).copied().unwrap_or_default()
    }

    /// A delivery from `queue` with `body`; `None` when the body is corrupt.
    pub fn delivered(&mut self, queue: &str, id: Option<Id>) -> Option<Id> {
        *self.delivered_to.entry(queue.to_owned()).or_default() += 1;
        let Some(id) = id else {
            self.corrupt += 1;
            return None;
        };
        if self.committed.contains(&id) {
            self.resurrected += 1;
        }
        let count = self.deliveries.entry(id).or_default();
        *count += 1;
        if *count == 1 {
            self.first_deliveries
                .entry((queue.to_owned(), id.publisher))
                .or_default()
                .push(id.seq);
        }
        Some(id)
    }

    /// A transaction that acknowledged `ids` committed.
    pub fn committed(&mut self, ids: &[Id]) {
        self.committed.extend(ids.iter().copied());
    }

    /// A stream record was confirmed at `position`.
    pub fn record_confirmed(&mut self, position: (u32, u64), id: Id) {
        self.records.insert(position, id);
    }

    /// What a final read of the stream found at `position` (`None`: a corrupt body).
    pub fn record_read(&mut self, position: (u32, u64), id: Option<Id>) {
        match (self.records.get(&position), id) {
            (Some(expected), Some(found)) if *expected != found => self.misplaced_records += 1,
            (_, None) => self.corrupt += 1,
            _ => {}
        }
    }

    /// The checks, once everything left in the queues was drained and the stream read;
    /// `read` holds the positions the final read of the stream found.
    pub fn report(&self, read: &HashSet<(u32, u64)>) -> Report {
        let mut report = Report {
            corrupt: self.corrupt,
            resurrected: self.resurrected,
            records_misplaced: self.misplaced_records,
            records_confirmed: self.records.len() as u64,
            ..Report::default()
        };
        // Per publisher to a retained stream, the first sequence number still there.
        let mut first_kept: HashMap<u32, u64> = HashMap::new();
        for (id, (queue, _)) in &self.publishes {
            if self.retained.contains(queue) && self.deliveries.contains_key(id) {
                let first = first_kept.entry(id.publisher).or_insert(id.seq);
                *first = (*first).min(id.seq);
            }
        }
        for (id, (queue, outcome)) in &self.publishes {
            let seen = self.deliveries.get(id).copied().unwrap_or(0);
            if self.retained.contains(queue) {
                if *outcome == Outcome::Confirmed {
                    report.retained_confirmed += 1;
                    let kept_from = first_kept.get(&id.publisher).copied().unwrap_or(u64::MAX);
                    if seen == 0 && id.seq < kept_from {
                        report.retained_deleted += 1;
                    } else if seen == 0 {
                        report.retained_lost += 1;
                    }
                }
                continue;
            }
            match outcome {
                Outcome::Confirmed => {
                    report.confirmed += 1;
                    report.lost += u64::from(seen == 0);
                }
                Outcome::Unknown => {
                    report.unknown += 1;
                    report.unknown_present += u64::from(seen > 0);
                }
                Outcome::Refused => {
                    report.refused += 1;
                    report.refused_present += u64::from(seen > 0);
                }
            }
        }
        for count in self.deliveries.values() {
            report.delivered += count;
            report.redelivered += count - 1;
        }
        report.redelivered = report.redelivered.saturating_sub(report.resurrected);
        for sequence in self.first_deliveries.values() {
            report.out_of_order +=
                sequence.windows(2).filter(|pair| pair[1] < pair[0]).count() as u64;
        }
        report.records_lost = self
            .records
            .keys()
            .filter(|position| !read.contains(position))
            .count() as u64;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(publisher: u32, seq: u64) -> Id {
        Id { publisher, seq }
    }

    #[test]
    fn the_checks_catch_each_broken_promise() {
        let mut ledger = Ledger::default();
        for seq in 0..4 {
            ledger.sent(id(1, seq), "q");
        }
        // Refused, yet delivered.
        ledger.sent(id(2, 0), "q");
        ledger.answered(id(2, 0), false);
        ledger.delivered("q", Some(id(2, 0)));
        ledger.answered(id(1, 0), true);
        ledger.answered(id(1, 1), true);
        ledger.answered(id(1, 2), true);
        // 0 and 2 delivered out of order, 1 never: lost; 3 unknown and absent.
        ledger.delivered("q", Some(id(1, 2)));
        ledger.delivered("q", Some(id(1, 0)));
        ledger.committed(&[id(1, 0)]);
        ledger.delivered("q", Some(id(1, 0)));
        ledger.delivered("q", Some(id(1, 2)));
        ledger.delivered("q", None);
        ledger.record_confirmed((0, 0), id(9, 0));
        ledger.record_confirmed((0, 1), id(9, 1));
        ledger.record_read((0, 0), Some(id(9, 5)));
        // A retained stream: 0 went with retention, 1 and 3 are there, 2 is missing.
        ledger.retained("r");
        for seq in 0..4 {
            ledger.sent(id(7, seq), "r");
            ledger.answered(id(7, seq), true);
        }
        ledger.delivered("r", Some(id(7, 1)));
        ledger.delivered("r", Some(id(7, 3)));
        // Refused where a refusal is uncertain: unknown, not refused.
        ledger.uncertain("q");
        ledger.sent(id(3, 0), "q");
        ledger.answered(id(3, 0), false);
        let report = ledger.report(&HashSet::from([(0, 0)]));
        assert_eq!(report.confirmed, 3);
        assert_eq!(report.lost, 1);
        assert_eq!(report.unknown, 2, "3 and the uncertain refusal");
        assert_eq!(report.unknown_present, 0);
        assert_eq!(report.resurrected, 1);
        assert_eq!(report.redelivered, 1);
        assert_eq!(report.out_of_order, 1);
        assert_eq!(report.corrupt, 1);
        assert_eq!(report.records_lost, 1);
        assert_eq!(report.records_misplaced, 1);
        assert_eq!((report.refused, report.refused_present), (1, 1));
        assert_eq!(
            (
                report.retained_confirmed,
                report.retained_deleted,
                report.retained_lost
            ),
            (4, 1, 1)
        );
        assert_eq!(ledger.answers(), (7, 2));
        assert_eq!(ledger.answers_for("q"), (3, 2));
        assert_eq!(ledger.delivered_from("q"), 6);
        assert_eq!(report.violations(), 8);
    }
}
