//! The `Streams` service: a stream's partitions as logs read by offset — declare, produce with
//! keys, fetch, follow (`follow`: a server stream, with or without a consumer group) and the
//! groups' committed offsets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postino_core::stream::{Spread, records_of};
use postino_core::{
    Action, Committer, CoreError, FetchSpec, OffsetCommit, Partitioner, StartAt, Stream,
    StreamSpec, record,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, caller};
use crate::convert::{message_from, wire_record};
use crate::{Shared, follow, proto, status_of};

/// A fetch's record count when the request names none.
const DEFAULT_MAX_RECORDS: usize = 500;

#[derive(Debug)]
pub(crate) struct Service(pub Arc<Shared>);

fn status(error: CoreError) -> Status {
    status_of(&error)
}

/// The stream `name` of the caller's host, once the caller may `action` it.
pub(crate) fn stream_of(
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<Arc<Stream>, Status> {
    caller.may(action, "queue", name)?;
    caller
        .host
        .stream(name)
        .ok_or_else(|| Status::not_found(format!("no stream '{name}'")))
}

/// Where a position on the wire starts a reader; `default` when it names none.
pub(crate) fn start_of(position: Option<&proto::Position>, default: StartAt) -> StartAt {
    use proto::position::At;
    match position.and_then(|position| position.at) {
        None => default,
        Some(At::Offset(offset)) => StartAt::Offset(offset),
        Some(At::TimestampMs(ms)) => StartAt::Timestamp(ms),
        Some(At::Edge(edge)) => match proto::Edge::try_from(edge) {
            Ok(proto::Edge::Latest) => StartAt::Latest,
            Ok(proto::Edge::Earliest) | Err(_) => StartAt::Earliest,
        },
    }
}

/// The spec a declaration asks for.
fn spec_of(request: &proto::DeclareStreamRequest) -> StreamSpec {
    StreamSpec {
        retention: request.retention_ms.map(Duration::from_millis),
        retention_bytes: request.retention_bytes,
        segment_bytes_max: request.segment_bytes,
        compaction: request.compaction_tombstone_ms.map(Duration::from_millis),
        ..StreamSpec::with_partitions(request.partitions.max(1))
    }
}

#[tonic::async_trait]
impl proto::streams_server::Streams for Service {
    async fn declare(
        &self,
        request: Request<proto::DeclareStreamRequest>,
    ) -> Result<Response<proto::DeclareStreamReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Configure, "queue", &request.stream)?;
        let wanted = spec_of(&request);
        let created = match caller.host.stream(&request.stream) {
            // An existing stream grows to the partitions asked for; its other settings stay.
            Some(stream) if wanted.partitions > stream.partition_count() => {
                stream.add_partitions(wanted.partitions).map_err(status)?;
                false
            }
            Some(_) => false,
            None => {
                caller
                    .host
                    .declare_stream(&request.stream, wanted)
                    .map_err(status)?
                    .1
            }
        };
        let partitions = caller
            .host
            .stream(&request.stream)
            .map_or(0, |stream| stream.partition_count());
        Ok(Response::new(proto::DeclareStreamReply {
            created,
            partitions,
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteStreamRequest>,
    ) -> Result<Response<proto::DeleteStreamReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Configure, "queue", &request.stream)?;
        caller
            .host
            .delete_stream(&request.stream)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteStreamReply {}))
    }

    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let stream = stream_of(&caller, &request.stream, Action::Write)?;
        let sync = request.sync();
        let records: Vec<_> = request
            .records
            .into_iter()
            .map(|wire| {
                let message = message_from(wire.message.unwrap_or_default());
                record::producer_record(wire.key.map(Bytes::from), &message, wire.partition)
            })
            .collect();
        let count = stream.partition_count();
        if let Some(partition) = records
            .iter()
            .filter_map(|record| record.partition)
            .find(|partition| *partition >= count)
        {
            return Err(Status::not_found(format!(
                "stream '{}' has no partition {partition}",
                request.stream
            )));
        }
        // The partitions are chosen here, in order, so that each record's offset is known.
        let mut partitioner = Partitioner::new(Spread::RoundRobin);
        let chosen: Vec<u32> = records
            .iter()
            .map(|record| {
                record
                    .partition
                    .unwrap_or_else(|| partitioner.choose(record.key.as_deref(), count))
            })
            .collect();
        let placed: Vec<_> = records
            .into_iter()
            .zip(&chosen)
            .map(|(record, partition)| postino_core::ProducerRecord {
                partition: Some(*partition),
                ..record
            })
            .collect();
        let produced = stream
            .produce_records(&mut partitioner, &placed)
            .await
            .map_err(status)?;
        let mut positions = vec![proto::RecordPosition::default(); chosen.len()];
        for (partition, batch) in &produced {
            let mine = chosen.iter().enumerate().filter(|(_, at)| *at == partition);
            for (offset, (index, _)) in (batch.base_offset..).zip(mine) {
                positions[index] = proto::RecordPosition {
                    partition: *partition,
                    offset,
                };
            }
        }
        if sync == proto::Sync::Stored {
            for (_, batch) in produced {
                batch.durable.await.map_err(|error| status(error.into()))?;
            }
        }
        Ok(Response::new(proto::ProduceReply { records: positions }))
    }

    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let stream = stream_of(&caller, &request.stream, Action::Read)?;
        let partition = stream.partition(request.partition).map_err(status)?;
        let from = partition
            .resolve(start_of(request.start.as_ref(), StartAt::Earliest))
            .await
            .map_err(status)?;
        let mut spec = FetchSpec::at(from).waiting(Duration::from_millis(request.wait_ms));
        if request.read_committed {
            spec = spec.committed();
        }
        let fetched = partition.fetch(spec).await.map_err(status)?;
        let mut records = records_of(&fetched).map_err(status)?;
        let max = match request.max_records {
            0 => DEFAULT_MAX_RECORDS,
            max => max as usize,
        };
        let next_offset = if records.len() > max {
            records.truncate(max);
            records.last().map_or(from, |last| last.offset + 1)
        } else {
            fetched.next_offset()
        };
        Ok(Response::new(proto::FetchReply {
            records: records
                .iter()
                .map(|record| wire_record(&request.stream, request.partition, record))
                .collect(),
            next_offset,
            high_watermark: fetched.high_watermark,
            log_start: fetched.log_start,
        }))
    }

    type FollowStream = ReceiverStream<Result<proto::FollowEvent, Status>>;

    async fn follow(
        &self,
        request: Request<proto::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        let stream = stream_of(&caller, &request.stream, Action::Read)?;
        let receiver = if request.group.is_empty() {
            follow::partitions(stream, &request).await?
        } else {
            caller.may(Action::Read, "group", &request.group)?;
            follow::group(Arc::clone(&caller.host), stream, request)
        };
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn commit(
        &self,
        request: Request<proto::CommitRequest>,
    ) -> Result<Response<proto::CommitReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Read, "group", &request.group)?;
        let committer = if request.member_id.is_empty() {
            Committer::Standalone
        } else {
            Committer::Member {
                member_id: request.member_id,
                generation: request.generation,
            }
        };
        let offsets = request
            .offsets
            .into_iter()
            .map(|offset| OffsetCommit {
                stream: offset.stream,
                partition: offset.partition,
                offset: offset.offset,
                metadata: String::new(),
            })
            .collect();
        caller
            .host
            .groups()
            .commit(&request.group, committer, offsets)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::CommitReply {}))
    }

    async fn committed(
        &self,
        request: Request<proto::CommittedRequest>,
    ) -> Result<Response<proto::CommittedReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let request = request.into_inner();
        caller.may(Action::Read, "group", &request.group)?;
        let offsets = caller
            .host
            .groups()
            .offsets(&request.group)
            .await
            .map_err(status)?
            .into_iter()
            .map(|((stream, partition), committed)| proto::StreamPartition {
                stream,
                partition,
                offset: committed.offset,
            })
            .collect();
        Ok(Response::new(proto::CommittedReply { offsets }))
    }
}
