//! Random histories of produce (keyed, keyless, to a named partition, by idempotent producers
//! with next, retried and gapped sequences), fetch, partition growth and restarts, checked
//! against a reference model of each partition's records and each producer's sequences.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use postino_core::stream::{Spread, partition_for_key, records_of};
use postino_core::{CoreError, FetchSpec, Partitioner, ProducerRecord, StreamSpec, VirtualHost};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, LogConfig};
use postino_types::SystemClock;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Sequence {
    Next,
    RetryLast,
    Gap,
}

#[derive(Debug, Clone)]
enum Op {
    Produce {
        key: Option<u8>,
        partition: Option<u8>,
        count: u8,
    },
    Idempotent {
        producer: u8,
        partition: u8,
        count: u8,
        sequence: Sequence,
    },
    Fetch {
        partition: u8,
        offset: u8,
    },
    Grow,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let sequence = prop_oneof![
        4 => Just(Sequence::Next),
        2 => Just(Sequence::RetryLast),
        1 => Just(Sequence::Gap),
    ];
    prop_oneof![
        4 => (proptest::option::of(0u8..6), proptest::option::weighted(0.2, 0u8..8), 1u8..4)
            .prop_map(|(key, partition, count)| Op::Produce { key, partition, count }),
        4 => (0u8..2, 0u8..8, 1u8..4, sequence).prop_map(|(producer, partition, count, sequence)| {
            Op::Idempotent { producer, partition, count, sequence }
        }),
        3 => (0u8..8, 0u8..40).prop_map(|(partition, offset)| Op::Fetch { partition, offset }),
        1 => Just(Op::Grow),
        1 => Just(Op::Restart),
    ]
}

/// What the model knows of a producer in one partition.
#[derive(Debug, Clone)]
struct ProducerModel {
    next_sequence: i32,
    last: (i32, usize, u64),
}

#[derive(Debug, Default)]
struct Model {
    partitions: Vec<Vec<String>>,
    producers: HashMap<(u8, u32), ProducerModel>,
    keyless: u32,
    written: u64,
}

fn open(dir: &Path) -> Arc<VirtualHost> {
    let config = LogConfig {
        durability: Durability::None,
        segment_bytes_max: 2048,
        batch_bytes_max: 2048,
        ..LogConfig::default()
    };
    VirtualHost::open("/", Some(dir.to_path_buf()), config, Arc::new(SystemClock))
        .expect("open virtual host")
}

fn value(model: &mut Model) -> String {
    model.written += 1;
    format!("record-{}", model.written)
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut host = open(dir.path());
    host.declare_stream("s", StreamSpec::with_partitions(2))
        .expect("declare");
    let producer_ids = [
        host.init_producer_id().expect("id"),
        host.init_producer_id().expect("id"),
    ];
    let mut model = Model {
        partitions: vec![Vec::new(), Vec::new()],
        ..Model::default()
    };
    let mut partitioner = Partitioner::new(Spread::RoundRobin);
    for op in ops {
        let stream = host.stream("s").expect("stream");
        let count = model.partitions.len() as u32;
        match op {
            Op::Produce {
                key,
                partition,
                count: records,
            } => {
                let partition = partition.map(|partition| u32::from(partition) % count);
                let mut batch = Vec::new();
                for _ in 0..records {
                    let value = value(&mut model);
                    let target = match (partition, key) {
                        (Some(partition), _) => partition,
                        (None, Some(key)) => partition_for_key(&[key], count),
                        (None, None) => {
                            model.keyless += 1;
                            (model.keyless - 1) % count
                        }
                    };
                    model.partitions[target as usize].push(value.clone());
                    batch.push(ProducerRecord {
                        key: key.map(|key| Bytes::copy_from_slice(&[key])),
                        value: Some(Bytes::from(value)),
                        partition,
                        ..ProducerRecord::default()
                    });
                }
                stream
                    .produce_records(&mut partitioner, &batch)
                    .await
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
            }
            Op::Idempotent {
                producer,
                partition,
                count: records,
                sequence,
            } => {
                let partition = u32::from(partition) % count;
                let known = model.producers.get(&(producer, partition)).cloned();
                let (first, values) = match (&sequence, &known) {
                    (Sequence::Next, _) => (
                        known.as_ref().map_or(0, |known| known.next_sequence),
                        (0..records).map(|_| value(&mut model)).collect::<Vec<_>>(),
                    ),
                    (Sequence::RetryLast, Some(known)) => {
                        let (first, length, base) = known.last;
                        let values = model.partitions[partition as usize]
                            [base as usize..base as usize + length]
                            .to_vec();
                        (first, values)
                    }
                    (Sequence::Gap, Some(known)) => {
                        (known.next_sequence + 2, vec![value(&mut model)])
                    }
                    (_, None) => continue,
                };
                let mut builder =
                    BatchBuilder::new().producer(producer_ids[producer as usize], 0, first);
                for value in &values {
                    builder.push(1, None, Some(value.as_bytes()), &[]);
                }
                let outcome = stream.produce(partition, builder.build()).await;
                match sequence {
                    Sequence::Next => {
                        let produced =
                            outcome.map_err(|error| TestCaseError::fail(error.to_string()))?;
                        let records = &mut model.partitions[partition as usize];
                        prop_assert_eq!(produced.base_offset, records.len() as u64);
                        prop_assert!(!produced.duplicate);
                        model.producers.insert(
                            (producer, partition),
                            ProducerModel {
                                next_sequence: first + values.len() as i32,
                                last: (first, values.len(), records.len() as u64),
                            },
                        );
                        records.extend(values);
                    }
                    Sequence::RetryLast => {
                        let produced =
                            outcome.map_err(|error| TestCaseError::fail(error.to_string()))?;
                        prop_assert!(produced.duplicate);
                        prop_assert_eq!(produced.base_offset, known.expect("known").last.2);
                    }
                    Sequence::Gap => {
                        let refused = matches!(outcome, Err(CoreError::OutOfOrderSequence { .. }));
                        prop_assert!(refused, "a gap was not refused: {:?}", outcome);
                    }
                }
            }
            Op::Fetch { partition, offset } => {
                let partition = u32::from(partition) % count;
                let records = &model.partitions[partition as usize];
                let offset = u64::from(offset);
                let fetched = stream.fetch(partition, FetchSpec::at(offset)).await;
                if offset > records.len() as u64 {
                    let refused = matches!(fetched, Err(CoreError::OffsetOutOfRange { .. }));
                    prop_assert!(refused, "read past the end: {:?}", fetched);
                    continue;
                }
                let fetched = fetched.map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert_eq!(fetched.high_watermark, records.len() as u64);
                let read = records_of(&fetched).expect("records decode");
                for (index, record) in read.iter().enumerate() {
                    let at = offset + index as u64;
                    prop_assert_eq!(record.offset, at);
                    let text = String::from_utf8(record.value.clone().expect("a value").to_vec())
                        .expect("utf-8");
                    prop_assert_eq!(&text, &records[at as usize]);
                }
                prop_assert_eq!(read.is_empty(), offset == records.len() as u64);
            }
            Op::Grow => {
                if count < 8 {
                    stream.add_partitions(count + 1).expect("grow");
                    model.partitions.push(Vec::new());
                }
            }
            Op::Restart => {
                host.close().await.expect("close");
                drop(stream);
                drop(host);
                host = open(dir.path());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn streams_agree_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
