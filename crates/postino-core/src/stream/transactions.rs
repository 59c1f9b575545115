//! Transactional producers of a host's streams (Kafka's transaction coordinator): a
//! transactional id maps to a producer id and an epoch that fences older instances; a
//! transaction spans partitions of many streams and group offset commits, and becomes visible
//! all at once on commit (a commit marker in each partition, then the offsets) or never (abort
//! markers). The coordinator's state is a compacted internal log keyed by transactional id in
//! `<host dir>/transactional-ids/`; its commit point is the durable `prepare-commit` record.
//!
//! After a restart, a transaction that was open is aborted (with the epoch raised, so its
//! producer is fenced) and one that was preparing is completed: after a crash a transaction is
//! either wholly visible or not at all. A transaction open longer than its timeout is aborted
//! the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use postino_storage::batch::ControlKind;
use serde_json::{Value, json};

use crate::compacted::CompactedLog;
use crate::error::{CoreError, TransactionError};
use crate::group::{Committer, OffsetCommit};
use crate::vhost::VirtualHost;

/// Longest transaction timeout a producer may ask for (Kafka `transaction.max.timeout.ms`).
pub const TRANSACTION_TIMEOUT_MAX_MS: u64 = 900_000;
/// How often open transactions are checked against their timeout.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Empty => "empty",
            Phase::Ongoing => "ongoing",
            Phase::PrepareCommit => "prepare-commit",
            Phase::PrepareAbort => "prepare-abort",
            Phase::CompleteCommit => "complete-commit",
            Phase::CompleteAbort => "complete-abort",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Phase::Empty,
            Phase::Ongoing,
            Phase::PrepareCommit,
            Phase::PrepareAbort,
            Phase::CompleteCommit,
            Phase::CompleteAbort,
        ]
        .into_iter()
        .find(|phase| phase.name() == name)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    producer_id: i64,
    epoch: i16,
    timeout_ms: u64,
    phase: Phase,
    started_ms: i64,
    partitions: BTreeSet<(String, u32)>,
    offsets: Vec<(String, OffsetCommit)>,
}

impl Entry {
    fn to_json(&self) -> Value {
        let offsets: Vec<Value> = self
            .offsets
            .iter()
            .map(|(group, commit)| {
                json!({
                    "group": group,
                    "stream": commit.stream,
                    "partition": commit.partition,
                    "offset": commit.offset,
                    "metadata": commit.metadata,
                })
            })
            .collect();
        json!({
            "producer_id": self.producer_id,
            "epoch": self.epoch,
            "timeout_ms": self.timeout_ms,
            "phase": self.phase.name(),
            "started_ms": self.started_ms,
            "partitions": self.partitions.iter().collect::<Vec<_>>(),
            "offsets": offsets,
        })
    }

    fn from_json(value: &Value) -> Option<Self> {
        let partitions = value["partitions"]
            .as_array()?
            .iter()
            .map(|pair| {
                Some((
                    pair[0].as_str()?.to_owned(),
                    u32::try_from(pair[1].as_u64()?).ok()?,
                ))
            })
            .collect::<Option<BTreeSet<_>>>()?;
        let offsets = value["offsets"]
            .as_array()?
            .iter()
            .map(|item| {
                Some((
                    item["group"].as_str()?.to_owned(),
                    OffsetCommit {
                        stream: item["stream"].as_str()?.to_owned(),
                        partition: u32::try_from(item["partition"].as_u64()?).ok()?,
                        offset: item["offset"].as_u64()?,
                        metadata: item["metadata"].as_str()?.to_owned(),
                    },
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            producer_id: value["producer_id"].as_i64()?,
            epoch: i16::try_from(value["epoch"].as_i64()?).ok()?,
            timeout_ms: value["timeout_ms"].as_u64()?,
            phase: Phase::parse(value["phase"].as_str()?)?,
            started_ms: value["started_ms"].as_i64()?,
            partitions,
            offsets,
        })
    }
}

/// The transaction coordinator's state: every transactional id and its log.
#[derive(Debug)]
pub(crate) struct ProducerTransactions {
    log: CompactedLog,
    entries: HashMap<String, Entry>,
}

impl ProducerTransactions {
    /// Reads the state saved in `log`.
    pub(crate) fn open(log: CompactedLog) -> Result<Self, CoreError> {
        let entries = log
            .live()
            .map(|(key, value)| {
                let id = String::from_utf8(key.to_vec()).ok();
                let entry = serde_json::from_slice::<Value>(value)
                    .ok()
                    .as_ref()
                    .and_then(Entry::from_json);
                id.zip(entry).ok_or(CoreError::CorruptMessage {
                    reason: "a transactional id record does not decode",
                })
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(Self { log, entries })
    }

    /// Saves `entry` under `id`; returns once durable.
    async fn save(&mut self, now_ms: i64, id: &str, entry: Entry) -> Result<(), CoreError> {
        let value = Bytes::from(entry.to_json().to_string());
        let ticket = self.log.write(
            now_ms,
            vec![(Bytes::copy_from_slice(id.as_bytes()), Some(value))],
        )?;
        self.entries.insert(id.to_owned(), entry);
        Ok(ticket.await?)
    }
}

fn refuse(id: &str, error: TransactionError) -> CoreError {
    CoreError::Transaction {
        transactional_id: Some(id.to_owned()),
        error,
    }
}

/// The entry of `id`, once `producer_id` at `epoch` is checked to be its current producer.
fn checked_entry(
    state: &ProducerTransactions,
    id: &str,
    producer_id: i64,
    epoch: i16,
) -> Result<Entry, CoreError> {
    let entry = state
        .entries
        .get(id)
        .cloned()
        .ok_or_else(|| refuse(id, TransactionError::UnknownProducerId))?;
    check(id, &entry, producer_id, epoch)?;
    Ok(entry)
}

/// Checks that `producer_id` at `epoch` is the current producer of `entry`.
fn check(id: &str, entry: &Entry, producer_id: i64, epoch: i16) -> Result<(), CoreError> {
    if entry.producer_id != producer_id {
        return Err(refuse(id, TransactionError::UnknownProducerId));
    }
    if epoch < entry.epoch {
        return Err(CoreError::ProducerFenced {
            producer_id,
            epoch,
            current_epoch: entry.epoch,
        });
    }
    if epoch > entry.epoch {
        return Err(refuse(id, TransactionError::UnknownProducerId));
    }
    Ok(())
}

impl VirtualHost {
    /// Registers a transactional producer (Kafka's InitProducerId with a transactional id):
    /// returns its producer id and a new epoch that fences every earlier instance. A
    /// transaction the earlier instance left open is aborted first.
    ///
    /// # Errors
    /// `Transaction(InvalidTimeout)`; storage errors.
    pub async fn init_transactions(
        &self,
        transactional_id: &str,
        timeout_ms: u64,
    ) -> Result<(i64, i16), CoreError> {
        if timeout_ms == 0 || timeout_ms > TRANSACTION_TIMEOUT_MAX_MS {
            return Err(refuse(transactional_id, TransactionError::InvalidTimeout));
        }
        let mut state = self.producer_transactions.lock().await;
        let now = self.now_ms();
        let known = state.entries.get(transactional_id).cloned();
        let (producer_id, epoch) = match known {
            Some(entry) => {
                let entry = self.finish(&mut state, transactional_id, entry).await?;
                if entry.epoch >= i16::MAX - 1 {
                    (self.init_producer_id()?, 0)
                } else {
                    (entry.producer_id, entry.epoch + 1)
                }
            }
            None => (self.init_producer_id()?, 0),
        };
        let entry = Entry {
            producer_id,
            epoch,
            timeout_ms,
            phase: Phase::Empty,
            started_ms: now,
            partitions: BTreeSet::new(),
            offsets: Vec::new(),
        };
        state.save(now, transactional_id, entry).await?;
        Ok((producer_id, epoch))
    }

    /// Adds partitions to the producer's transaction, opening one if none is open (Kafka's
    /// AddPartitionsToTxn); the partitions then accept its transactional batches.
    ///
    /// # Errors
    /// `Transaction(UnknownProducerId | InvalidState)`, `ProducerFenced`; `NotFound`,
    /// `UnknownPartition`; storage errors.
    pub async fn add_partitions_to_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
    ) -> Result<(), CoreError> {
        let mut handles = Vec::with_capacity(partitions.len());
        for (stream, partition) in partitions {
            let found = self.stream(stream).ok_or_else(|| CoreError::NotFound {
                kind: "stream",
                name: stream.clone(),
            })?;
            handles.push(found.partition(*partition)?);
        }
        let mut state = self.producer_transactions.lock().await;
        let mut entry = self.open_entry(&state, transactional_id, producer_id, epoch)?;
        entry.partitions.extend(partitions.iter().cloned());
        state.save(self.now_ms(), transactional_id, entry).await?;
        for handle in handles {
            handle.register_transaction(producer_id, epoch).await?;
        }
        Ok(())
    }

    /// Adds offset commits of `group` to the producer's transaction (Kafka's AddOffsetsToTxn
    /// and TxnOffsetCommit): they are committed with it, or never.
    ///
    /// # Errors
    /// As [`VirtualHost::add_partitions_to_transaction`].
    pub async fn commit_offsets_in_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), CoreError> {
        let mut state = self.producer_transactions.lock().await;
        let mut entry = self.open_entry(&state, transactional_id, producer_id, epoch)?;
        entry
            .offsets
            .extend(offsets.into_iter().map(|commit| (group.to_owned(), commit)));
        state.save(self.now_ms(), transactional_id, entry).await
    }

    /// The entry of a checked producer whose transaction is open, or opens now.
    fn open_entry(
        &self,
        state: &ProducerTransactions,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<Entry, CoreError> {
        let mut entry = checked_entry(state, transactional_id, producer_id, epoch)?;
        match entry.phase {
            Phase::Ongoing => {}
            Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => {
                entry.phase = Phase::Ongoing;
                entry.started_ms = self.now_ms();
                entry.partitions.clear();
                entry.offsets.clear();
            }
            Phase::PrepareCommit | Phase::PrepareAbort => {
                return Err(refuse(transactional_id, TransactionError::InvalidState));
            }
        }
        Ok(entry)
    }

    /// Commits or aborts the producer's transaction (Kafka's EndTxn); returns once it is
    /// complete: every partition has its marker and, on commit, the offsets are committed. A
    /// retry of the same decision succeeds.
    ///
    /// # Errors
    /// `Transaction(UnknownProducerId | InvalidState)`, `ProducerFenced`; storage errors.
    pub async fn end_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), CoreError> {
        let mut state = self.producer_transactions.lock().await;
        let mut entry = checked_entry(&state, transactional_id, producer_id, epoch)?;
        match (entry.phase, commit) {
            (Phase::Ongoing, _) => {}
            (Phase::CompleteCommit, true) | (Phase::CompleteAbort, false) => return Ok(()),
            _ => return Err(refuse(transactional_id, TransactionError::InvalidState)),
        }
        entry.phase = if commit {
            Phase::PrepareCommit
        } else {
            Phase::PrepareAbort
        };
        // The commit point: once this is durable the transaction will be completed, even
        // after a crash.
        state
            .save(self.now_ms(), transactional_id, entry.clone())
            .await?;
        self.finish(&mut state, transactional_id, entry).await?;
        Ok(())
    }

    /// Brings a transactional id's transaction to an end: an open one is aborted with the
    /// epoch raised (fencing its producer), a preparing one is completed. Returns the entry
    /// as it is afterwards.
    async fn finish(
        &self,
        state: &mut ProducerTransactions,
        transactional_id: &str,
        mut entry: Entry,
    ) -> Result<Entry, CoreError> {
        let (kind, complete) = match entry.phase {
            Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => return Ok(entry),
            Phase::Ongoing => {
                entry.epoch = entry.epoch.saturating_add(1);
                (ControlKind::Abort, Phase::CompleteAbort)
            }
            Phase::PrepareAbort => (ControlKind::Abort, Phase::CompleteAbort),
            Phase::PrepareCommit => (ControlKind::Commit, Phase::CompleteCommit),
        };
        for (stream, partition) in &entry.partitions {
            // A stream deleted since has nothing left to mark.
            let Some(found) = self.stream(stream) else {
                continue;
            };
            found
                .partition(*partition)?
                .write_marker(entry.producer_id, entry.epoch, kind)
                .await?;
        }
        if kind == ControlKind::Commit {
            let mut by_group: HashMap<String, Vec<OffsetCommit>> = HashMap::new();
            for (group, commit) in entry.offsets.drain(..) {
                by_group.entry(group).or_default().push(commit);
            }
            for (group, offsets) in by_group {
                self.groups()
                    .commit(&group, Committer::Transaction, offsets)
                    .await?;
            }
        }
        entry.phase = complete;
        entry.partitions.clear();
        entry.offsets.clear();
        state
            .save(self.now_ms(), transactional_id, entry.clone())
            .await?;
        Ok(entry)
    }

    /// Aborts every transaction open longer than its timeout.
    ///
    /// # Errors
    /// The first error met; the others are still tried.
    pub async fn abort_expired_transactions(&self) -> Result<(), CoreError> {
        let mut state = self.producer_transactions.lock().await;
        let now = self.now_ms();
        let expired: Vec<(String, Entry)> = state
            .entries
            .iter()
            .filter(|(_, entry)| {
                entry.phase == Phase::Ongoing
                    && now.saturating_sub(entry.started_ms) >= entry.timeout_ms as i64
            })
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect();
        let mut outcome = Ok(());
        for (id, entry) in expired {
            tracing::warn!(transactional_id = %id, "transaction timed out, aborting");
            if let Err(error) = self.finish(&mut state, &id, entry).await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        outcome
    }

    /// Completes what a stop interrupted (open transactions aborted, preparing ones finished),
    /// then aborts timed-out transactions every second while the host lives. `state` is the
    /// coordinator's lock, taken when the host opened so that no request comes first.
    pub(crate) async fn run_transaction_coordinator(
        host: Weak<VirtualHost>,
        mut state: tokio::sync::OwnedMutexGuard<ProducerTransactions>,
    ) {
        if let Some(live) = host.upgrade() {
            let pending: Vec<(String, Entry)> = state
                .entries
                .iter()
                .filter(|(_, entry)| {
                    !matches!(
                        entry.phase,
                        Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort
                    )
                })
                .map(|(id, entry)| (id.clone(), entry.clone()))
                .collect();
            for (id, entry) in pending {
                if let Err(error) = live.finish(&mut state, &id, entry).await {
                    tracing::error!(transactional_id = %id, %error, "could not complete a transaction after a restart");
                }
            }
        }
        drop(state);
        loop {
            tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
            let Some(live) = host.upgrade() else { return };
            if let Err(error) = live.abort_expired_transactions().await {
                tracing::error!(%error, "could not abort a timed-out transaction");
            }
        }
    }
}

/// Opens the coordinator state in `log` (`<host dir>/transactional-ids/`, or memory).
pub(crate) fn open_state(
    log: Box<dyn postino_storage::Log>,
) -> Result<Arc<tokio::sync::Mutex<ProducerTransactions>>, CoreError> {
    Ok(Arc::new(tokio::sync::Mutex::new(
        ProducerTransactions::open(CompactedLog::open(log)?)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{FetchSpec, StreamSpec, records_of};
    use postino_storage::batch::BatchBuilder;
    use postino_storage::{Durability, FileLog, LogConfig};
    use postino_types::SystemClock;

    fn config() -> LogConfig {
        LogConfig {
            durability: Durability::None,
            ..LogConfig::default()
        }
    }

    /// A stop after the durable `prepare-commit` and before the markers: the restart
    /// completes the commit, so the records appear; a stop while open aborts.
    #[tokio::test]
    async fn a_restart_completes_a_prepared_commit_and_aborts_an_open_transaction() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let open = || {
            VirtualHost::open(
                "/",
                Some(dir.path().to_path_buf()),
                config(),
                Arc::new(SystemClock),
            )
            .expect("open")
        };
        let host = open();
        host.declare_stream("s", StreamSpec::with_partitions(2))
            .expect("declare");
        let mut producers = Vec::new();
        for (index, id) in ["prepared", "open"].into_iter().enumerate() {
            let (producer_id, epoch) = host.init_transactions(id, 60_000).await.expect("init");
            let partition = index as u32;
            host.add_partitions_to_transaction(
                id,
                producer_id,
                epoch,
                &[("s".to_owned(), partition)],
            )
            .await
            .expect("add");
            let mut builder = BatchBuilder::new()
                .producer(producer_id, epoch, 0)
                .transactional();
            builder.push(1, None, Some(id.as_bytes()), &[]);
            host.stream("s")
                .expect("stream")
                .produce(partition, builder.build())
                .await
                .expect("produce");
            producers.push((producer_id, epoch));
        }
        host.close().await.expect("close");
        drop(host);
        // Write the commit point of "prepared" as end_transaction would before its markers.
        {
            let log = FileLog::open(dir.path().join("transactional-ids"), config()).expect("log");
            let mut state =
                ProducerTransactions::open(CompactedLog::open(Box::new(log)).expect("open"))
                    .expect("state");
            let mut entry = state.entries["prepared"].clone();
            entry.phase = Phase::PrepareCommit;
            state.save(1, "prepared", entry).await.expect("save");
        }
        let host = open();
        host.abort_expired_transactions()
            .await
            .expect("recovery finished");
        let stream = host.stream("s").expect("stream");
        let committed = |partition| {
            let stream = Arc::clone(&stream);
            async move {
                let fetched = stream
                    .fetch(partition, FetchSpec::at(0).committed())
                    .await
                    .expect("fetch");
                records_of(&fetched)
                    .expect("records")
                    .into_iter()
                    .map(|record| record.value.expect("a value"))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(committed(0).await, [Bytes::from_static(b"prepared")]);
        assert!(
            committed(1).await.is_empty(),
            "the open transaction was aborted"
        );
        let (id, epoch) = producers[1];
        assert!(matches!(
            host.end_transaction("open", id, epoch, true).await,
            Err(CoreError::ProducerFenced { .. })
        ));
    }

    #[test]
    fn entries_survive_their_json_form() {
        let entry = Entry {
            producer_id: 7,
            epoch: 3,
            timeout_ms: 60_000,
            phase: Phase::PrepareCommit,
            started_ms: 1_700_000_000_000,
            partitions: BTreeSet::from([("orders".to_owned(), 2), ("audit".to_owned(), 0)]),
            offsets: vec![(
                "billing".to_owned(),
                OffsetCommit {
                    stream: "orders".to_owned(),
                    partition: 2,
                    offset: 99,
                    metadata: String::new(),
                },
            )],
        };
        assert_eq!(Entry::from_json(&entry.to_json()), Some(entry));
        assert_eq!(Entry::from_json(&json!({"phase": "ongoing"})), None);
    }
}
