//! `--stream` of `postino publish` and `postino consume`: producing records and following a
//! stream, alone or as a consumer group's member, over the native API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postino_grpc::StreamsClient;
use postino_grpc::proto::{self, follow_event::Item, position::At};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use super::{Failure, Login, insert_bytes, message_json, next, print_line};

/// Records one produce call carries when no `--rate` spaces them.
const BATCH_RECORDS: usize = 500;
/// How often a group member commits what it printed (Kafka's `auto.commit.interval.ms` is
/// 5 s).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long a consumer waits for its first assignment at least: a group's first round waits
/// for more members (3 s by default) and a rebalance for every member to rejoin.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(15);

/// The start `--from` names.
pub(super) fn position(text: &str) -> Result<proto::Position, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "--from {text:?}: not earliest, latest, an offset, @MS or -AGE"
        ))
    };
    let at = match text {
        "earliest" => At::Edge(proto::Edge::Earliest.into()),
        "latest" => At::Edge(proto::Edge::Latest.into()),
        _ => {
            if let Some(ms) = text.strip_prefix('@') {
                At::TimestampMs(ms.parse().map_err(|_| bad())?)
            } else if let Some(age) = text.strip_prefix('-') {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| {
                        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
                    });
                At::TimestampMs(now_ms.saturating_sub(age_ms(age).ok_or_else(bad)?))
            } else {
                At::Offset(text.parse().map_err(|_| bad())?)
            }
        }
    };
    Ok(proto::Position { at: Some(at) })
}

/// `30s`, `10m`, `2h`, `1d`, `500ms` (a bare number is seconds) in milliseconds.
fn age_ms(text: &str) -> Option<i64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.parse::<i64>().ok()?.checked_mul(unit_ms)
}

/// Produces messages to a stream as `postino publish --stream` asks.
pub(super) struct Producer {
    pub vhost: String,
    pub stream: String,
    pub key: Option<String>,
    pub partition: Option<u32>,
    pub sync: proto::Sync,
    /// One record a call, this far apart (`--rate`); else calls of up to 500 records.
    pub interval: Option<Duration>,
}

impl Producer {
    pub(super) async fn run(
        self,
        channel: Channel,
        login: &Login,
        messages: impl Iterator<Item = proto::Message>,
    ) -> Result<(), Failure> {
        let mut client = StreamsClient::new(channel);
        let mut ticker = self.interval.map(tokio::time::interval);
        let per_call = if ticker.is_some() { 1 } else { BATCH_RECORDS };
        let mut messages = messages.peekable();
        while messages.peek().is_some() {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            let records = messages
                .by_ref()
                .take(per_call)
                .map(|message| proto::ProduceRecord {
                    key: self.key.clone().map(String::into_bytes),
                    message: Some(message),
                    partition: self.partition,
                })
                .collect();
            let request = proto::ProduceRequest {
                vhost: self.vhost.clone(),
                stream: self.stream.clone(),
                records,
                sync: self.sync.into(),
            };
            client.produce(login.request(request)).await?;
        }
        Ok(())
    }
}

/// A record as one JSON object: the message and where it is in the stream.
fn record_json(record: &proto::Record) -> Value {
    let mut object = message_json(record.message.clone().unwrap_or_default());
    object.insert("stream".into(), json!(record.stream));
    object.insert("partition".into(), json!(record.partition));
    object.insert("offset".into(), json!(record.offset));
    object.insert("timestamp_ms".into(), json!(record.timestamp_ms));
    if let Some(key) = &record.key {
        insert_bytes(&mut object, "key", key);
    }
    Value::Object(object)
}

/// Follows a stream as `postino consume --stream` asks.
pub(super) struct Consumer {
    /// Commit the offsets of printed records (with a group).
    pub commits: bool,
    pub limit: u64,
    pub timeout: Option<Duration>,
    pub json: bool,
}

/// A group member's place: its id, generation, and the next offset of each partition it
/// printed records of and has not committed.
#[derive(Default)]
struct Progress {
    member: Option<(String, i32)>,
    printed: BTreeMap<(String, u32), u64>,
}

impl Consumer {
    pub(super) async fn run(
        self,
        channel: Channel,
        login: &Login,
        follow: proto::FollowRequest,
    ) -> Result<(), Failure> {
        let mut client = StreamsClient::new(channel);
        let (vhost, group) = (follow.vhost.clone(), follow.group.clone());
        let mut events = client.follow(login.request(follow)).await?.into_inner();
        let first_wait = self.timeout.map(|timeout| timeout.max(ASSIGNMENT_WAIT));
        let Some(first) = next(&mut events, first_wait).await? else {
            return Err(Failure::Server("no assignment came from the server".into()));
        };
        let mut progress = Progress::default();
        let mut item = first.item;
        let (mut received, mut committed_at) = (0u64, Instant::now());
        loop {
            match item {
                Some(Item::Assigned(assigned)) => {
                    let partitions: Vec<String> = assigned
                        .partitions
                        .iter()
                        .map(|at| format!("{}@{}", at.partition, at.offset))
                        .collect();
                    eprintln!(
                        "postino: following partitions {} (generation {})",
                        partitions.join(", "),
                        assigned.generation
                    );
                    // What the last generation printed and did not commit will be read again
                    // by the partitions' new holders (at-least-once).
                    progress = Progress {
                        member: (!assigned.member_id.is_empty())
                            .then_some((assigned.member_id, assigned.generation)),
                        printed: BTreeMap::new(),
                    };
                }
                Some(Item::Record(record)) => {
                    print_line(
                        record.message.as_ref(),
                        self.json.then(|| record_json(&record)),
                    )?;
                    received += 1;
                    progress
                        .printed
                        .insert((record.stream, record.partition), record.offset + 1);
                    if committed_at.elapsed() >= COMMIT_EVERY {
                        match self
                            .commit(&mut client, login, &vhost, &group, &mut progress)
                            .await
                        {
                            Err(status) if status.code() == Code::FailedPrecondition => {
                                eprintln!("postino: commit refused, a rebalance is under way");
                            }
                            outcome => outcome?,
                        }
                        committed_at = Instant::now();
                    }
                }
                None => {}
            }
            if received >= self.limit {
                break;
            }
            let Some(event) = next(&mut events, self.timeout).await? else {
                break;
            };
            item = event.item;
        }
        Ok(self
            .commit(&mut client, login, &vhost, &group, &mut progress)
            .await?)
    }

    /// Commits what `progress` printed, as its member, when this consumer commits.
    async fn commit(
        &self,
        client: &mut StreamsClient<Channel>,
        login: &Login,
        vhost: &str,
        group: &str,
        progress: &mut Progress,
    ) -> Result<(), tonic::Status> {
        let Some((member_id, generation)) = progress.member.clone() else {
            return Ok(());
        };
        if !self.commits || progress.printed.is_empty() {
            return Ok(());
        }
        let offsets = std::mem::take(&mut progress.printed)
            .into_iter()
            .map(|((stream, partition), offset)| proto::StreamPartition {
                stream,
                partition,
                offset,
            })
            .collect();
        let request = proto::CommitRequest {
            vhost: vhost.to_owned(),
            group: group.to_owned(),
            member_id,
            generation,
            offsets,
        };
        client.commit(login.request(request)).await?;
        Ok(())
    }
}
