//! Storage faults under the whole running broker: the server runs with
//! `POSTINO_FAULT_INJECTION` naming a switch file of the harness's, and the harness turns
//! faults on for one queue's directory (`torture-faulty`) while publishers and consumers use it
//! and the other queues.
//!
//! - **A failed fsync, then short writes** (one phase each), under the queue and under a stream
//!   (`torture-faulty-stream`, produced to over the native API): the faulty queue must refuse
//!   publishes (`basic.nack`; the outcome is unknown, the bytes may be on disk), go on refusing
//!   after the fault is switched off (a failed log takes nothing until it is reopened), say so
//!   in its log, while the other queues go on confirming; the stream's produces fail; after a
//!   SIGKILL and a restart without faults, both take writes again, and every record the stream
//!   confirmed is at its offset at the end.
//! - **Bit flips on read**: after a restart (so the faulty queue's backlog is read from disk),
//!   every read of the faulty queue's files flips a bit. No corrupt message may be delivered,
//!   the other queues go on delivering, and once the flips stop the faulty queue delivers its
//!   whole backlog.
//!
//! The ledger's checks run on everything at the end, after a drain.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::body::{self, Id};
use crate::ledger::{Ledger, Report};
use crate::server::{Addresses, Server};
use crate::workload::{self, Shared, until};

/// The queue the faults are injected under.
const FAULTY_QUEUE: &str = "torture-faulty";
/// The stream the write faults are injected under too.
const FAULTY_STREAM: &str = "torture-faulty-stream";
/// The fragment of their directories' paths the faults are scoped to: both names hold it,
/// no other queue's or stream's does.
const SCOPE: &str = "/torture-faulty";
/// The queue whose consumer shows the others keep delivering.
const WITNESS_QUEUE: &str = workload::AMQP_QUEUES[0];
/// Confirmations (or deliveries) each step waits for.
const PROGRESS: u64 = 300;
/// The backlog the read phase leaves in the faulty queue before its restart.
const BACKLOG: u64 = 2_000;
/// Publisher ids of this test start here (a ledger of its own).
const FIRST_PUBLISHER: u32 = 2_000_000;

/// What one write fault did.
#[derive(Debug)]
pub struct WritePhase {
    pub fault: &'static str,
    /// Publishes to the faulty queue refused while it was failed.
    pub refused: u64,
    /// Confirmations of the other queues meanwhile.
    pub others_confirmed: u64,
    /// Whether the server's log reported the failure.
    pub reported: bool,
    /// Produces to the faulty stream that failed while it was failed.
    pub stream_failed: u64,
}

/// What the read phase did.
#[derive(Debug)]
pub struct ReadPhase {
    /// Deliveries of the faulty queue while its reads were corrupt.
    pub delivered_while_flipped: u64,
    /// Deliveries of the witness queue meanwhile.
    pub others_delivered: u64,
    /// Deliveries of the faulty queue once the flips stopped.
    pub delivered_after: u64,
}

#[derive(Debug)]
pub struct FaultsReport {
    pub writes: Vec<WritePhase>,
    pub read: ReadPhase,
    pub checks: Report,
    /// Produces to the faulty stream confirmed, and those not found at their offset with
    /// their body at the end (violations).
    pub stream_confirmed: u64,
    pub stream_missing: u64,
}

/// What the faulty stream's producer saw: each confirmed record's offset and body, and how
/// many produces failed.
#[derive(Debug, Default)]
struct StreamRecord {
    confirmed: Vec<(u64, Id)>,
    failed: u64,
}

struct Harness<'a> {
    binary: &'a Path,
    run: &'a Path,
    switches: std::path::PathBuf,
    addresses: Addresses,
    ledger: Shared,
    stream: Arc<Mutex<StreamRecord>>,
    next_publisher: u32,
    message_bytes: usize,
}

impl Harness<'_> {
    fn server(&self) -> Server {
        let environment = vec![
            (
                "POSTINO_STORAGE_SEGMENT_BYTES_MAX".to_owned(),
                "65536".to_owned(),
            ),
            (
                "POSTINO_FAULT_INJECTION".to_owned(),
                self.switches.display().to_string(),
            ),
        ];
        Server::new(self.binary, self.run, environment, self.addresses.clone())
            .with_data(self.run.join("faults-data"))
    }

    fn switch(&self, faults: &str) -> Result<()> {
        let text = if faults.is_empty() {
            String::new()
        } else {
            format!("{faults} scope={SCOPE}\n")
        };
        std::fs::write(&self.switches, text).context("write the fault switches")
    }

    /// The queues' publishers, one more to the faulty queue, and a consumer of each of
    /// `consumed`.
    fn spawn(&mut self, consumed: &[&'static str]) -> Vec<tokio::task::JoinHandle<()>> {
        let first = self.next_publisher;
        self.next_publisher += workload::PUBLISHERS + 1;
        let mut tasks =
            workload::spawn_publishers(&self.addresses, &self.ledger, first, self.message_bytes);
        let (addresses, ledger, bytes) = (
            self.addresses.clone(),
            Arc::clone(&self.ledger),
            self.message_bytes,
        );
        tasks.push(tokio::spawn(async move {
            let id = first + workload::PUBLISHERS + 1;
            let _ = workload::publish_amqp(&addresses, &ledger, id, FAULTY_QUEUE, bytes).await;
        }));
        let (addresses, record) = (self.addresses.clone(), Arc::clone(&self.stream));
        let publisher = first + workload::PUBLISHERS + 2;
        tasks.push(tokio::spawn(async move {
            let _ = produce_faulty(&addresses, &record, publisher, bytes).await;
        }));
        for &queue in consumed {
            let (addresses, ledger) = (self.addresses.clone(), Arc::clone(&self.ledger));
            tasks.push(tokio::spawn(async move {
                let _ = workload::consume(&addresses, &ledger, queue).await;
            }));
        }
        tasks
    }

    fn faulty(&self) -> (u64, u64) {
        workload::lock(&self.ledger).answers_for(FAULTY_QUEUE)
    }

    fn stream_counts(&self) -> (u64, u64) {
        let record = lock(&self.stream);
        (record.confirmed.len() as u64, record.failed)
    }

    fn others_confirmed(&self) -> u64 {
        let ledger = workload::lock(&self.ledger);
        ledger.answers().0 - ledger.answers_for(FAULTY_QUEUE).0
    }

    fn delivered(&self, queue: &str) -> u64 {
        workload::lock(&self.ledger).delivered_from(queue)
    }

    fn log_mentions(&self, text: &str) -> bool {
        std::fs::read_to_string(self.run.join("server.log")).is_ok_and(|log| log.contains(text))
    }

    /// Waits until the server has read the switch file with `fault` in it.
    async fn switched(&self, fault: &str) -> Result<()> {
        until("the server did not read the fault switches", || {
            std::fs::read_to_string(self.run.join("server.log")).is_ok_and(|log| {
                log.lines()
                    .any(|line| line.contains("storage faults changed") && line.contains(fault))
            })
        })
        .await
    }
}

fn lock(record: &Mutex<StreamRecord>) -> std::sync::MutexGuard<'_, StreamRecord> {
    record
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Produces to the faulty stream until aborted, going on after failures (each one counted: its
/// outcome is unknown).
async fn produce_faulty(
    addresses: &Addresses,
    record: &Mutex<StreamRecord>,
    publisher: u32,
    bytes: usize,
) -> Result<()> {
    let options = postino_client::Options::default().retry_for(std::time::Duration::ZERO);
    let client =
        postino_client::Client::connect_with(&format!("http://{}", addresses.grpc), options)
            .await?;
    let stream = client.stream(FAULTY_STREAM);
    for seq in 0.. {
        let id = Id { publisher, seq };
        match stream.produce(None, body::encode(id, bytes)).await {
            Ok((_, offset)) => lock(record).confirmed.push((offset, id)),
            Err(_) => {
                lock(record).failed += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}

/// Reads the faulty stream; answers how many confirmed records are not at their offset.
async fn check_stream(addresses: &Addresses, record: &Mutex<StreamRecord>) -> Result<u64> {
    let client = postino_client::Client::connect(&format!("http://{}", addresses.grpc)).await?;
    let stream = client.stream(FAULTY_STREAM);
    let mut found = std::collections::HashMap::new();
    let mut from = postino_client::Start::Earliest;
    loop {
        let records = stream.fetch(0, from, 500).await?;
        let Some(last) = records.last() else { break };
        from = postino_client::Start::Offset(last.offset + 1);
        for read in records {
            found.insert(read.offset, body::decode(read.message.body()));
        }
    }
    let missing = lock(record)
        .confirmed
        .iter()
        .filter(|(offset, id)| found.get(offset) != Some(&Some(*id)))
        .count();
    Ok(missing as u64)
}

async fn declare(addresses: &Addresses) -> Result<()> {
    workload::declare(addresses).await?;
    let connection = workload::amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(FAULTY_QUEUE.into(), durable, FieldTable::default())
        .await?;
    connection.close(200, "declared".into()).await?;
    let client = postino_client::Client::connect(&format!("http://{}", addresses.grpc)).await?;
    client.stream(FAULTY_STREAM).declare(1).await?;
    Ok(())
}

async fn write_phase(
    harness: &mut Harness<'_>,
    server: &mut Server,
    fault: &'static str,
) -> Result<WritePhase> {
    let tasks = harness.spawn(&[WITNESS_QUEUE]);
    let (confirmed, _) = harness.faulty();
    until(
        "the faulty queue confirmed nothing before its fault",
        || harness.faulty().0 >= confirmed + PROGRESS,
    )
    .await?;
    harness.switch(fault)?;
    harness.switched(fault).await?;
    let (_, refused_from) = harness.faulty();
    let (_, stream_failed_from) = harness.stream_counts();
    until("the faulty queue refused nothing under its fault", || {
        harness.faulty().1 > refused_from
    })
    .await?;
    until(
        "the faulty stream failed no produce under its fault",
        || harness.stream_counts().1 > stream_failed_from,
    )
    .await?;
    let others_from = harness.others_confirmed();
    until(
        "the other queues stopped confirming while one queue's storage failed",
        || harness.others_confirmed() >= others_from + PROGRESS,
    )
    .await?;
    harness.switch("")?;
    let (confirmed_after, refused_after) = harness.faulty();
    until("the failed queue stopped answering publishes", || {
        harness.faulty().1 >= refused_after + PROGRESS
    })
    .await?;
    let (confirmed_end, refused_end) = harness.faulty();
    ensure!(
        confirmed_end == confirmed_after,
        "the failed queue confirmed {} publishes before it was reopened",
        confirmed_end - confirmed_after
    );
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    server.kill()?;
    let reported = harness.log_mentions("log stops accepting writes");
    server.start().context("restart after the fault")?;
    let stream_failed = harness.stream_counts().1 - stream_failed_from;
    let tasks = harness.spawn(&[]);
    let (recovered_from, _) = harness.faulty();
    let (stream_recovered_from, _) = harness.stream_counts();
    until("the faulty queue did not recover after a restart", || {
        harness.faulty().0 >= recovered_from + PROGRESS
    })
    .await?;
    until("the faulty stream did not recover after a restart", || {
        harness.stream_counts().0 >= stream_recovered_from + PROGRESS / 3
    })
    .await?;
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(WritePhase {
        fault,
        refused: refused_end - refused_from,
        others_confirmed: harness.others_confirmed() - others_from,
        reported,
        stream_failed,
    })
}

async fn read_phase(harness: &mut Harness<'_>, server: &mut Server) -> Result<ReadPhase> {
    // A backlog in the faulty queue, then a restart: it is read from disk from now on.
    let tasks = harness.spawn(&[]);
    let (confirmed, _) = harness.faulty();
    until("the faulty queue took no backlog", || {
        harness.faulty().0 >= confirmed + BACKLOG
    })
    .await?;
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    server.kill()?;
    server.start().context("restart before the read faults")?;
    harness.switch("flip_reads")?;
    harness.switched("flip_reads").await?;
    let (faulty_from, witness_from) = (
        harness.delivered(FAULTY_QUEUE),
        harness.delivered(WITNESS_QUEUE),
    );
    let tasks = harness.spawn(&[FAULTY_QUEUE, WITNESS_QUEUE]);
    until(
        "the other queues stopped delivering while one queue's reads were corrupt",
        || harness.delivered(WITNESS_QUEUE) >= witness_from + PROGRESS,
    )
    .await?;
    let delivered_while_flipped = harness.delivered(FAULTY_QUEUE) - faulty_from;
    let others_delivered = harness.delivered(WITNESS_QUEUE) - witness_from;
    harness.switch("")?;
    until(
        "the faulty queue did not deliver its backlog after the read faults stopped",
        || harness.delivered(FAULTY_QUEUE) >= faulty_from + BACKLOG,
    )
    .await?;
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(ReadPhase {
        delivered_while_flipped,
        others_delivered,
        delivered_after: harness.delivered(FAULTY_QUEUE) - faulty_from - delivered_while_flipped,
    })
}

/// Runs the write faults, the read fault, and the checks, in `run`.
pub fn run(
    binary: &Path,
    run: &Path,
    runtime: &tokio::runtime::Runtime,
    message_bytes: usize,
) -> Result<FaultsReport> {
    let mut harness = Harness {
        binary,
        run,
        switches: run.join("fault-switches"),
        addresses: Addresses::free()?,
        ledger: Arc::new(Mutex::new(Ledger::default())),
        stream: Arc::default(),
        next_publisher: FIRST_PUBLISHER,
        message_bytes,
    };
    // A nack of the faulty queue may follow bytes that reached the disk all the same.
    workload::lock(&harness.ledger).uncertain(FAULTY_QUEUE);
    harness.switch("")?;
    let mut server = harness.server();
    server.start().context("start for the storage faults")?;
    runtime.block_on(declare(&harness.addresses))?;
    let mut writes = Vec::new();
    for fault in ["fail_syncs", "short_writes"] {
        eprintln!("faults: {fault} under {FAULTY_QUEUE}");
        writes.push(runtime.block_on(write_phase(&mut harness, &mut server, fault))?);
    }
    eprintln!("faults: flip_reads under {FAULTY_QUEUE}");
    let read = runtime.block_on(read_phase(&mut harness, &mut server))?;
    server.kill()?;
    server.start().context("start for the drain")?;
    let addresses = harness.addresses.clone();
    let drained = runtime.block_on(async {
        declare(&addresses).await?;
        workload::drain(&addresses, &harness.ledger).await
    })?;
    let faulty_left = runtime.block_on(drain_faulty(&harness))?;
    let stream_missing = runtime.block_on(check_stream(&addresses, &harness.stream))?;
    let stream_confirmed = harness.stream_counts().0;
    server.stop().context("the clean stop after the drain")?;
    let checks = workload::lock(&harness.ledger).report(&drained);
    eprintln!("faults: {faulty_left} messages left in {FAULTY_QUEUE} at the end");
    Ok(FaultsReport {
        writes,
        read,
        checks,
        stream_confirmed,
        stream_missing,
    })
}

/// Takes what is left in the faulty queue (the drain covers the others); answers how many.
async fn drain_faulty(harness: &Harness<'_>) -> Result<u64> {
    let before = harness.delivered(FAULTY_QUEUE);
    let (addresses, ledger) = (harness.addresses.clone(), Arc::clone(&harness.ledger));
    let consumer = tokio::spawn(async move {
        let _ = workload::consume(&addresses, &ledger, FAULTY_QUEUE).await;
    });
    let mut last = before;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let now = harness.delivered(FAULTY_QUEUE);
        if now == last {
            break;
        }
        last = now;
    }
    consumer.abort();
    Ok(last - before)
}
