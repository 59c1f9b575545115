//! `Streams.Follow`: a server stream of a stream's records — of named partitions from a
//! position, or of the partitions a consumer group assigns, the server being the group's
//! member on the client's behalf (it joins, heartbeats, rejoins on a rebalance and leaves when
//! the client goes).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use postino_core::group::assign::{Strategy, encode_subscription};
use postino_core::stream::records_of;
use postino_core::{
    CoreError, FetchSpec, GroupError, Join, OnOutOfRange, PartitionHandle, StartAt, Stream,
    VirtualHost,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Status;

use crate::convert::wire_record;
use crate::streams::start_of;
use crate::{proto, status_of};

/// How long one fetch of a follower waits for records.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// Events a follow stream holds for a client that is not reading; with one fetch (at most
/// 1 MiB) per partition, what bounds the server's memory for a slow client.
const STREAM_BUFFER: usize = 64;
/// How often the server heartbeats for a group member (Kafka's `heartbeat.interval.ms` is 3 s;
/// a shorter one makes a rebalance start sooner).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The member's session (the server heartbeats for it; the client going ends it at once).
const SESSION_TIMEOUT_MS: u64 = 30_000;
/// How long a rebalance waits for members to rejoin.
const REBALANCE_TIMEOUT_MS: u64 = 10_000;

type Events = mpsc::Sender<Result<proto::FollowEvent, Status>>;
type Receiver = mpsc::Receiver<Result<proto::FollowEvent, Status>>;

fn event(item: proto::follow_event::Item) -> proto::FollowEvent {
    proto::FollowEvent { item: Some(item) }
}

fn assigned(
    member_id: String,
    generation: i32,
    stream: &str,
    starts: &[(PartitionHandle, u64)],
) -> proto::FollowEvent {
    let partitions = starts
        .iter()
        .map(|(handle, from)| proto::StreamPartition {
            stream: stream.to_owned(),
            partition: handle.partition(),
            offset: *from,
        })
        .collect();
    event(proto::follow_event::Item::Assigned(proto::Assignment {
        member_id,
        generation,
        partitions,
    }))
}

/// Follows the request's partitions (every one when it names none) from its start (default
/// the latest offset).
pub(crate) async fn partitions(
    stream: Arc<Stream>,
    request: &proto::FollowRequest,
) -> Result<Receiver, Status> {
    let wanted: Vec<u32> = if request.partitions.is_empty() {
        (0..stream.partition_count()).collect()
    } else {
        request.partitions.clone()
    };
    let start = start_of(request.start.as_ref(), StartAt::Latest);
    let mut starts = Vec::with_capacity(wanted.len());
    for partition in wanted {
        let handle = stream
            .partition(partition)
            .map_err(|error| status_of(&error))?;
        let from = handle
            .resolve(start)
            .await
            .map_err(|error| status_of(&error))?;
        starts.push((handle, from));
    }
    let (events, receiver) = mpsc::channel(STREAM_BUFFER);
    // The buffer is empty: there is room.
    let _ = events.try_send(Ok(assigned(String::new(), 0, stream.name(), &starts)));
    for (handle, from) in starts {
        let reader = Reader {
            stream: stream.name().to_owned(),
            partition: handle,
            read_committed: request.read_committed,
            events: events.clone(),
        };
        tokio::spawn(reader.run(from));
    }
    Ok(receiver)
}

/// Follows the partitions of `request.stream` that the group `request.group` assigns.
pub(crate) fn group(
    host: Arc<VirtualHost>,
    stream: Arc<Stream>,
    request: proto::FollowRequest,
) -> Receiver {
    let (events, receiver) = mpsc::channel(STREAM_BUFFER);
    let member = Member {
        start: start_of(request.start.as_ref(), StartAt::Latest),
        read_committed: request.read_committed,
        group: request.group,
        host,
        stream,
        events,
    };
    tokio::spawn(member.run());
    receiver
}

/// Reads one partition into a follow stream until the client goes or the partition does.
struct Reader {
    stream: String,
    partition: PartitionHandle,
    read_committed: bool,
    events: Events,
}

impl Reader {
    async fn run(self, mut at: u64) {
        loop {
            let mut spec = FetchSpec {
                // Retention passed the reader: go on from the earliest record kept.
                on_out_of_range: OnOutOfRange::Earliest,
                ..FetchSpec::at(at).waiting(FOLLOW_WAIT)
            };
            if self.read_committed {
                spec = spec.committed();
            }
            let fetched = tokio::select! {
                fetched = self.partition.fetch(spec) => fetched,
                () = self.events.closed() => return,
            };
            let read = fetched.and_then(|fetched| Ok((records_of(&fetched)?, fetched)));
            let (records, fetched) = match read {
                Ok(read) => read,
                Err(error) => {
                    let _ = self.events.send(Err(status_of(&error))).await;
                    return;
                }
            };
            for record in &records {
                let wire = wire_record(&self.stream, self.partition.partition(), record);
                let item = event(proto::follow_event::Item::Record(wire));
                if self.events.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            at = fetched.next_offset();
        }
    }
}

/// A consumer group member the server keeps for a follow stream.
struct Member {
    host: Arc<VirtualHost>,
    stream: Arc<Stream>,
    group: String,
    /// Where a partition the group committed nothing for starts.
    start: StartAt,
    read_committed: bool,
    events: Events,
}

/// How one generation ended.
enum Ended {
    Rebalance,
    ClientGone,
}

impl Member {
    async fn run(self) {
        let mut member_id = None;
        loop {
            match self.generation(&mut member_id).await {
                Ok(Ended::Rebalance) => {}
                Ok(Ended::ClientGone) => break,
                Err(status) => {
                    let _ = self.events.send(Err(status)).await;
                    break;
                }
            }
        }
        if let Some(member_id) = member_id
            && let Err(error) = self.host.groups().leave(&self.group, vec![member_id]).await
        {
            tracing::debug!(group = %self.group, %error, "a follow stream's member did not leave");
        }
    }

    /// One generation: join, sync, follow the partitions assigned while heartbeats succeed.
    /// The readers stop when it returns (the `JoinSet` drops).
    async fn generation(&self, member_id: &mut Option<String>) -> Result<Ended, Status> {
        let groups = self.host.groups();
        let subscription = encode_subscription(
            &BTreeSet::from([self.stream.name().to_owned()]),
            &BTreeSet::new(),
        );
        let join = Join {
            member_id: member_id.clone(),
            instance_id: None,
            client_id: "postino-grpc".to_owned(),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
            protocol_type: "consumer".to_owned(),
            protocols: vec![("range".to_owned(), subscription)],
        };
        let joined = tokio::select! {
            joined = groups.join(&self.group, join) => joined,
            () = self.events.closed() => return Ok(Ended::ClientGone),
        };
        let joined = match joined {
            Ok(joined) => joined,
            Err(error) => return self.rejoin(error, member_id),
        };
        *member_id = Some(joined.member_id.clone());
        let counts = |name: &str| {
            self.host
                .stream(name)
                .map(|stream| stream.partition_count())
        };
        let assignment = match groups
            .sync_assigned(&self.group, &joined, Strategy::Range, counts)
            .await
        {
            Ok(assignment) => assignment,
            Err(error) => return self.rejoin(error, member_id),
        };
        let committed: HashMap<(String, u32), u64> = groups
            .offsets(&self.group)
            .await
            .map_err(|error| status_of(&error))?
            .into_iter()
            .map(|(at, committed)| (at, committed.offset))
            .collect();
        let mut starts = Vec::with_capacity(assignment.len());
        for (stream, partition) in assignment {
            let handle = self
                .stream
                .partition(partition)
                .map_err(|error| status_of(&error))?;
            let from = match committed.get(&(stream, partition)) {
                Some(offset) => *offset,
                None => handle
                    .resolve(self.start)
                    .await
                    .map_err(|error| status_of(&error))?,
            };
            starts.push((handle, from));
        }
        let announced = assigned(
            joined.member_id.clone(),
            joined.generation,
            self.stream.name(),
            &starts,
        );
        if self.events.send(Ok(announced)).await.is_err() {
            return Ok(Ended::ClientGone);
        }
        let mut readers = JoinSet::new();
        for (handle, from) in starts {
            let reader = Reader {
                stream: self.stream.name().to_owned(),
                partition: handle,
                read_committed: self.read_committed,
                events: self.events.clone(),
            };
            readers.spawn(reader.run(from));
        }
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let beaten = groups
                        .heartbeat(&self.group, &joined.member_id, joined.generation)
                        .await;
                    if let Err(error) = beaten {
                        return self.rejoin(error, member_id);
                    }
                }
                () = self.events.closed() => return Ok(Ended::ClientGone),
            }
        }
    }

    /// A group error means join again (as a new member when this one is unknown); others end
    /// the stream.
    fn rejoin(&self, error: CoreError, member_id: &mut Option<String>) -> Result<Ended, Status> {
        match error {
            CoreError::Group {
                error: GroupError::UnknownMember,
                ..
            } => {
                *member_id = None;
                Ok(Ended::Rebalance)
            }
            CoreError::Group {
                error: GroupError::RebalanceInProgress | GroupError::IllegalGeneration,
                ..
            } => Ok(Ended::Rebalance),
            other => Err(status_of(&other)),
        }
    }
}
