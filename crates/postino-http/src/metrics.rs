//! `/metrics` in Prometheus text format (no authentication, like RabbitMQ's Prometheus
//! endpoint): per-queue depth, consumers and message counters, per-partition offsets and size,
//! memory and disk against their limits, the alarm, uptime.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use postino_core::Alarm;
use postino_types::{BUCKET_BOUNDS_US, HistogramSnapshot};

use crate::Api;
use crate::error::ApiResult;

/// The families written, with their type and help.
const FAMILIES: [(&str, &str, &str); 24] = [
    (
        "postino_queue_messages_ready",
        "gauge",
        "Messages ready for delivery",
    ),
    (
        "postino_queue_messages_unacked",
        "gauge",
        "Messages delivered and not yet settled",
    ),
    (
        "postino_queue_messages_delayed",
        "gauge",
        "Messages waiting for their x-delay",
    ),
    (
        "postino_queue_messages_ready_bytes",
        "gauge",
        "Bytes of the ready messages",
    ),
    ("postino_queue_consumers", "gauge", "Consumers of the queue"),
    (
        "postino_queue_messages_published_total",
        "counter",
        "Messages published to the queue since it started",
    ),
    (
        "postino_queue_messages_delivered_total",
        "counter",
        "Messages delivered to consumers and gets since the queue started",
    ),
    (
        "postino_queue_messages_acked_total",
        "counter",
        "Deliveries acknowledged since the queue started",
    ),
    (
        "postino_stream_partition_offset_next",
        "gauge",
        "The offset the next record of the partition gets",
    ),
    (
        "postino_stream_partition_offset_earliest",
        "gauge",
        "The partition's oldest retained offset",
    ),
    (
        "postino_stream_partition_bytes",
        "gauge",
        "Bytes the partition's log holds",
    ),
    (
        "postino_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the broker",
    ),
    (
        "postino_memory_high_watermark_bytes",
        "gauge",
        "Memory above which publishers are blocked",
    ),
    (
        "postino_disk_free_bytes",
        "gauge",
        "Free space on the data directory's file system",
    ),
    (
        "postino_disk_free_limit_bytes",
        "gauge",
        "Free space below which publishers are blocked",
    ),
    (
        "postino_alarm",
        "gauge",
        "1 while the resource alarm is raised",
    ),
    (
        "postino_connections",
        "gauge",
        "Open client connections, by protocol",
    ),
    (
        "postino_channels",
        "gauge",
        "Open channels over every connection",
    ),
    (
        "postino_connections_opened_total",
        "counter",
        "Client connections accepted since the node started",
    ),
    (
        "postino_connections_closed_total",
        "counter",
        "Client connections closed since the node started",
    ),
    (
        "postino_connection_received_bytes_total",
        "counter",
        "Bytes read from clients since the node started",
    ),
    (
        "postino_connection_sent_bytes_total",
        "counter",
        "Bytes written to clients since the node started",
    ),
    (
        "postino_fsync_duration_seconds",
        "histogram",
        "Duration of each group commit's fdatasync (and directory fsync) over every log",
    ),
    (
        "postino_confirm_duration_seconds",
        "histogram",
        "From a confirmed publish's arrival to its confirm being sent",
    ),
];

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Samples by family, in the order of [`FAMILIES`].
#[derive(Default)]
struct Samples {
    lines: Vec<Vec<String>>,
}

impl Samples {
    fn add(&mut self, family: &str, labels: &str, value: impl std::fmt::Display) {
        if self.lines.is_empty() {
            self.lines = vec![Vec::new(); FAMILIES.len()];
        }
        if let Some(index) = FAMILIES.iter().position(|(name, _, _)| *name == family) {
            let line = if labels.is_empty() {
                format!("{family} {value}")
            } else {
                format!("{family}{{{labels}}} {value}")
            };
            self.lines[index].push(line);
        }
    }

    /// A histogram's `_bucket`, `_sum` and `_count` series.
    fn add_histogram(&mut self, family: &str, histogram: &HistogramSnapshot) {
        if self.lines.is_empty() {
            self.lines = vec![Vec::new(); FAMILIES.len()];
        }
        let Some(index) = FAMILIES.iter().position(|(name, _, _)| *name == family) else {
            return;
        };
        let bounds = BUCKET_BOUNDS_US
            .iter()
            .map(|bound_us| (*bound_us as f64 / 1e6).to_string())
            .chain(std::iter::once("+Inf".to_owned()));
        let lines = &mut self.lines[index];
        for (bound, count) in bounds.zip(&histogram.cumulative) {
            lines.push(format!("{family}_bucket{{le=\"{bound}\"}} {count}"));
        }
        lines.push(format!("{family}_sum {}", histogram.sum_us as f64 / 1e6));
        lines.push(format!("{family}_count {}", histogram.count));
    }

    fn render(self, uptime_seconds: f64) -> String {
        let mut text = String::new();
        for (index, (name, kind, help)) in FAMILIES.iter().enumerate() {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for line in self.lines.get(index).into_iter().flatten() {
                let _ = writeln!(text, "{line}");
            }
        }
        let _ = writeln!(
            text,
            "# HELP postino_uptime_seconds Seconds since the management API started\n\
             # TYPE postino_uptime_seconds gauge\npostino_uptime_seconds {uptime_seconds}"
        );
        text
    }
}

pub async fn metrics(State(api): State<Arc<Api>>) -> ApiResult<impl IntoResponse> {
    let mut samples = Samples::default();
    for vhost in api.broker.vhost_names() {
        let Some(host) = api.broker.vhost(&vhost) else {
            continue;
        };
        for name in host.queue_names() {
            let Some(queue) = host.queue(&name) else {
                continue;
            };
            let Ok(stats) = queue.stats().await else {
                continue;
            };
            let labels = format!("vhost=\"{}\",queue=\"{}\"", escape(&vhost), escape(&name));
            samples.add("postino_queue_messages_ready", &labels, stats.ready);
            samples.add("postino_queue_messages_unacked", &labels, stats.unacked);
            samples.add("postino_queue_messages_delayed", &labels, stats.delayed);
            samples.add(
                "postino_queue_messages_ready_bytes",
                &labels,
                stats.ready_bytes,
            );
            samples.add("postino_queue_consumers", &labels, stats.consumers);
            samples.add(
                "postino_queue_messages_published_total",
                &labels,
                stats.published,
            );
            samples.add(
                "postino_queue_messages_delivered_total",
                &labels,
                stats.delivered,
            );
            samples.add(
                "postino_queue_messages_acked_total",
                &labels,
                stats.acknowledged,
            );
        }
        for name in host.stream_names() {
            let Some(stream) = host.stream(&name) else {
                continue;
            };
            for partition in 0..stream.partition_count() {
                let Ok(handle) = stream.partition(partition) else {
                    continue;
                };
                let Ok(stats) = handle.stats().await else {
                    continue;
                };
                let labels = format!(
                    "vhost=\"{}\",stream=\"{}\",partition=\"{partition}\"",
                    escape(&vhost),
                    escape(&name)
                );
                samples.add("postino_stream_partition_offset_next", &labels, stats.next);
                samples.add(
                    "postino_stream_partition_offset_earliest",
                    &labels,
                    stats.earliest,
                );
                samples.add("postino_stream_partition_bytes", &labels, stats.size_bytes);
            }
        }
    }
    let resources = api.broker.resources();
    if let Some(memory) = resources.memory_bytes {
        samples.add("postino_process_resident_memory_bytes", "", memory);
    }
    samples.add(
        "postino_memory_high_watermark_bytes",
        "",
        resources.memory_bytes_max,
    );
    if let Some(free) = resources.disk_free_bytes {
        samples.add("postino_disk_free_bytes", "", free);
    }
    samples.add(
        "postino_disk_free_limit_bytes",
        "",
        resources.disk_free_bytes_min,
    );
    for (alarm, label) in [(Alarm::Memory, "memory"), (Alarm::Disk, "disk")] {
        samples.add(
            "postino_alarm",
            &format!("resource=\"{label}\""),
            u8::from(resources.alarm == alarm),
        );
    }
    connection_samples(&api, &mut samples);
    let text = samples.render(api.started.elapsed().as_secs_f64());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Connections by protocol, channels, connection totals and the two latency histograms.
fn connection_samples(api: &Api, samples: &mut Samples) {
    let connections = api.broker.connections();
    let mut by_protocol: BTreeMap<&str, u64> = BTreeMap::new();
    let mut channels = 0;
    for connection in connections.list() {
        *by_protocol.entry(connection.origin().protocol).or_default() += 1;
        channels += connection.session().channels.len();
    }
    for (protocol, count) in by_protocol {
        samples.add(
            "postino_connections",
            &format!("protocol=\"{}\"", escape(protocol)),
            count,
        );
    }
    samples.add("postino_channels", "", channels);
    let (opened, closed) = connections.opened_and_closed();
    samples.add("postino_connections_opened_total", "", opened);
    samples.add("postino_connections_closed_total", "", closed);
    let traffic = connections.traffic();
    samples.add(
        "postino_connection_received_bytes_total",
        "",
        traffic.received_bytes,
    );
    samples.add(
        "postino_connection_sent_bytes_total",
        "",
        traffic.sent_bytes,
    );
    samples.add_histogram(
        "postino_fsync_duration_seconds",
        &api.broker.fsync_latency(),
    );
    samples.add_histogram(
        "postino_confirm_duration_seconds",
        &connections.confirm_latency().snapshot(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_families_typed() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut samples = Samples::default();
        samples.add("postino_queue_consumers", "queue=\"q\"", 3);
        let text = samples.render(1.5);
        assert!(text.contains(
            "# TYPE postino_queue_consumers gauge\npostino_queue_consumers{queue=\"q\"} 3\n"
        ));
        assert!(text.contains("postino_uptime_seconds 1.5"));
    }

    #[test]
    fn histograms_are_written_as_cumulative_buckets_with_sum_and_count() {
        let histogram = postino_types::LatencyHistogram::new();
        histogram.record(std::time::Duration::from_micros(300));
        histogram.record(std::time::Duration::from_secs(20));
        let mut samples = Samples::default();
        samples.add_histogram("postino_fsync_duration_seconds", &histogram.snapshot());
        let text = samples.render(0.0);
        assert!(text.contains("# TYPE postino_fsync_duration_seconds histogram\n"));
        assert!(text.contains("postino_fsync_duration_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("postino_fsync_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("postino_fsync_duration_seconds_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("postino_fsync_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("postino_fsync_duration_seconds_sum 20.0003\n"));
        assert!(text.contains("postino_fsync_duration_seconds_count 2\n"));
    }
}
