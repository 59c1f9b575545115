//! Streams: partitions of records read by offset (reading removes nothing), produced with
//! keys, fetched or followed from an offset or a time, alone or in a consumer group whose
//! committed offsets the broker keeps.

use std::collections::BTreeMap;

use postino_grpc::proto::{
    self, CommitRequest, DeclareStreamRequest, DeleteStreamRequest, FetchRequest, FollowRequest,
    Position, ProduceRecord, ProduceRequest, StreamPartition, follow_event::Item, position::At,
};
use postino_grpc::{MAX_MESSAGE_BYTES, StreamsClient};
use tokio_stream::{StreamExt, StreamMap};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::{Client, Error, Message, SyncMode, with_backoff};

fn streams(channel: Channel) -> StreamsClient<Channel> {
    StreamsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Where a reader starts in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first record still stored.
    Earliest,
    /// Only records produced from now on.
    Latest,
    Offset(u64),
    /// The first record stamped at or after this time (ms since the epoch).
    Time(i64),
}

impl Start {
    fn position(self) -> Position {
        let at = match self {
            Self::Earliest => At::Edge(proto::Edge::Earliest.into()),
            Self::Latest => At::Edge(proto::Edge::Latest.into()),
            Self::Offset(offset) => At::Offset(offset),
            Self::Time(ms) => At::TimestampMs(ms),
        };
        Position { at: Some(at) }
    }
}

/// A record of a stream.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    /// When it was produced, ms since the epoch.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub message: Message,
}

impl Record {
    fn of(record: proto::Record) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key,
            message: Message(record.message.unwrap_or_default()),
        }
    }
}

/// A stream of a broker.
#[derive(Debug, Clone)]
pub struct Stream {
    client: Client,
    name: String,
}

impl Stream {
    pub(crate) fn new(client: Client, name: &str) -> Self {
        Self {
            client,
            name: name.to_owned(),
        }
    }

    /// Declares it with `partitions` (an existing stream with fewer grows); answers how many
    /// it has.
    ///
    /// # Errors
    /// The broker's refusal (a queue of that name, no permission).
    pub async fn declare(&self, partitions: u32) -> Result<u32, Error> {
        let request = DeclareStreamRequest {
            vhost: self.client.vhost(),
            stream: self.name.clone(),
            partitions,
            ..DeclareStreamRequest::default()
        };
        let reply = crate::call!(&self.client, streams, declare, request)?;
        Ok(reply.partitions)
    }

    /// Deletes it with its records.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn delete(&self) -> Result<(), Error> {
        let request = DeleteStreamRequest {
            vhost: self.client.vhost(),
            stream: self.name.clone(),
        };
        crate::call!(&self.client, streams, delete, request)?;
        Ok(())
    }

    /// Appends a record, durably; with a key, the key picks its partition (murmur2, as
    /// Kafka's default partitioner), so records of one key keep their order. Answers its
    /// partition and offset.
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use postino_client::Start;
    ///
    /// let clicks = client.stream("clicks");
    /// clicks.declare(3).await?;
    /// let (partition, first) = clicks.produce(Some(b"user-1"), "home").await?;
    /// let (same, second) = clicks.produce(Some(b"user-1"), "cart").await?;
    /// assert_eq!((same, second), (partition, first + 1), "one key, one partition, in order");
    /// let records = clicks.fetch(partition, Start::Offset(first), 10).await?;
    /// let pages: Vec<_> = records.iter().filter_map(|record| record.message.text()).collect();
    /// assert_eq!(pages, ["home", "cart"]);
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing stream.
    pub async fn produce(
        &self,
        key: Option<&[u8]>,
        message: impl Into<Message>,
    ) -> Result<(u32, u64), Error> {
        let record = ProduceRecord {
            key: key.map(<[u8]>::to_vec),
            message: Some(message.into().0),
            partition: None,
        };
        let request = ProduceRequest {
            vhost: self.client.vhost(),
            stream: self.name.clone(),
            records: vec![record],
            sync: SyncMode::Stored.into(),
        };
        let reply = crate::call!(&self.client, streams, produce, request)?;
        let position = reply.records.first().ok_or_else(|| {
            Status::internal("the broker answered a produce without the record's position")
        })?;
        Ok((position.partition, position.offset))
    }

    /// Up to `max` records of `partition` from `start`, without waiting.
    ///
    /// # Errors
    /// `OUT_OF_RANGE` for an offset outside the partition; `NOT_FOUND`.
    pub async fn fetch(
        &self,
        partition: u32,
        start: Start,
        max: u32,
    ) -> Result<Vec<Record>, Error> {
        let request = FetchRequest {
            vhost: self.client.vhost(),
            stream: self.name.clone(),
            partition,
            start: Some(start.position()),
            max_records: max,
            wait_ms: 0,
            read_committed: false,
        };
        let reply = crate::call!(&self.client, streams, fetch, request)?;
        Ok(reply.records.into_iter().map(Record::of).collect())
    }

    /// Follows every partition from `start`, or — with `group` — the partitions the group
    /// assigns this consumer, from the group's committed offsets (`start` where it has none).
    ///
    /// ```
    /// # postino_client::examples::run(|client| async move {
    /// use postino_client::Start;
    ///
    /// let clicks = client.stream("clicks");
    /// clicks.declare(1).await?;
    /// clicks.produce(None, "home").await?;
    /// clicks.produce(None, "cart").await?;
    /// let mut reader = clicks.follow(Start::Earliest, Some("analytics")).await?;
    /// let home = reader.next().await?.expect("a record");
    /// let cart = reader.next().await?.expect("a record");
    /// assert_eq!((home.offset, cart.offset), (0, 1));
    /// reader.commit().await?;
    /// assert_eq!(reader.positions(), [(0, 2)], "the group goes on at offset 2");
    /// # Ok(()) });
    /// ```
    ///
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing stream.
    pub async fn follow(&self, start: Start, group: Option<&str>) -> Result<Consumer, Error> {
        let request = FollowRequest {
            vhost: self.client.vhost(),
            stream: self.name.clone(),
            partitions: Vec::new(),
            start: Some(start.position()),
            read_committed: false,
            group: group.unwrap_or_default().to_owned(),
        };
        let mut consumer = Consumer {
            client: self.client.clone(),
            request,
            followed: StreamMap::new(),
            member: None,
            next: BTreeMap::new(),
        };
        let budget = self.client.inner.options.retry_for;
        let first = with_backoff(budget, crate::unreachable, || {
            consumer.open(consumer.request.clone())
        })
        .await?;
        consumer.followed.insert(ALL, first);
        Ok(consumer)
    }
}

/// The key of a follow of every partition (or of a group's) in a [`Consumer`]'s map.
const ALL: u32 = u32::MAX;

/// Records of a followed stream, in order within each partition.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    request: FollowRequest,
    /// The follow streams: one of every partition (or of the group's), or after a lost
    /// connection without a group, one per partition from where it was.
    followed: StreamMap<u32, Streaming<proto::FollowEvent>>,
    /// The group member and generation of the last assignment.
    member: Option<(String, i32)>,
    /// The next offset to read in each partition followed.
    next: BTreeMap<u32, u64>,
}

impl Consumer {
    async fn open(&self, request: FollowRequest) -> Result<Streaming<proto::FollowEvent>, Status> {
        Ok(streams(self.client.channel())
            .follow(self.client.request(request))
            .await?
            .into_inner())
    }

    /// The next record, waiting for one; `None` when the follow ended. Across a lost
    /// connection it reopens (with backoff): in a group from the committed offsets (records
    /// read since the last [`Consumer::commit`] come again), else from where each partition
    /// was.
    ///
    /// # Errors
    /// `NOT_FOUND` when the stream was deleted; a server gone for longer than the client's
    /// retry budget.
    pub async fn next(&mut self) -> Result<Option<Record>, Error> {
        loop {
            let Some((_, event)) = self.followed.next().await else {
                return Ok(None);
            };
            match event {
                Ok(proto::FollowEvent {
                    item: Some(Item::Record(record)),
                }) => {
                    self.next.insert(record.partition, record.offset + 1);
                    return Ok(Some(Record::of(record)));
                }
                Ok(proto::FollowEvent {
                    item: Some(Item::Assigned(assignment)),
                }) => self.assigned(assignment),
                Ok(proto::FollowEvent { item: None }) => {}
                Err(status) if crate::unreachable(&status) => self.reopen().await?,
                Err(status) => return Err(status.into()),
            }
        }
    }

    fn assigned(&mut self, assignment: proto::Assignment) {
        if !assignment.member_id.is_empty() {
            self.member = Some((assignment.member_id, assignment.generation));
            self.next.clear();
        }
        for partition in assignment.partitions {
            self.next
                .entry(partition.partition)
                .or_insert(partition.offset);
        }
    }

    async fn reopen(&mut self) -> Result<(), Error> {
        let budget = self.client.inner.options.retry_for;
        self.followed = StreamMap::new();
        if !self.request.group.is_empty() {
            let request = self.request.clone();
            let again =
                with_backoff(budget, crate::unreachable, || self.open(request.clone())).await?;
            self.followed.insert(ALL, again);
            return Ok(());
        }
        for (partition, offset) in self.positions() {
            let request = FollowRequest {
                partitions: vec![partition],
                start: Some(Start::Offset(offset).position()),
                ..self.request.clone()
            };
            let again =
                with_backoff(budget, crate::unreachable, || self.open(request.clone())).await?;
            self.followed.insert(partition, again);
        }
        Ok(())
    }

    /// The partitions followed, each with the next offset to read.
    #[must_use]
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.next.iter().map(|(&p, &o)| (p, o)).collect()
    }

    /// Commits, for the group, the next offset of every partition read so far: a consumer
    /// that takes its place starts there.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` outside a group or after a rebalance made the assignment stale
    /// (the records come again to the new owner).
    pub async fn commit(&self) -> Result<(), Error> {
        let (member_id, generation) = self.member.clone().ok_or_else(|| {
            Status::failed_precondition("only a consumer in a group commits offsets")
        })?;
        let request = CommitRequest {
            vhost: self.client.vhost(),
            group: self.request.group.clone(),
            member_id,
            generation,
            offsets: self
                .next
                .iter()
                .map(|(&partition, &offset)| StreamPartition {
                    stream: self.request.stream.clone(),
                    partition,
                    offset,
                })
                .collect(),
        };
        crate::call!(&self.client, streams, commit, request)?;
        Ok(())
    }
}
