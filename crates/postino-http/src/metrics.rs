//! `/metrics` in Prometheus text format (no authentication, like RabbitMQ's Prometheus
//! endpoint): per-queue depth, consumers and message counters, per-partition offsets and size,
//! memory and disk against their limits, the alarm, uptime.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use postino_core::Alarm;

use crate::Api;
use crate::error::ApiResult;

/// The families written, with their type and help.
const FAMILIES: [(&str, &str, &str); 16] = [
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
    let text = samples.render(api.started.elapsed().as_secs_f64());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
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
}
