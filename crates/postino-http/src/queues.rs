//! Queues: listings with ready / unacknowledged / delayed counts and rates, declare, delete,
//! purge. Stream queues (`x-queue-type: stream`) are listed with `type: stream`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use postino_core::catalog::arguments_json;
use postino_core::{Action, QueueSpec, Stream};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, parse};
use crate::listing::ListQuery;
use crate::{Api, created, host_of};

/// A queue or stream of a listing.
#[derive(Debug)]
struct Entry {
    vhost: String,
    name: String,
}

/// The records a stream holds, over its partitions.
pub async fn stream_depth(stream: &Stream) -> ApiResult<(u64, u64)> {
    let (mut records, mut bytes) = (0, 0);
    for partition in 0..stream.partition_count() {
        let stats = stream.partition(partition)?.stats().await?;
        records += stats.next - stats.earliest;
        bytes += stats.size_bytes;
    }
    Ok((records, bytes))
}

async fn describe(api: &Api, vhost: &str, name: &str) -> ApiResult<Value> {
    let host = host_of(api, vhost)?;
    if let Some(queue) = host.queue_info(name) {
        let stats = queue.handle.stats().await?;
        let rates = api.rates.observe(vhost, name, stats);
        return Ok(json!({
            "name": name,
            "vhost": vhost,
            "type": "classic",
            "state": "running",
            "durable": queue.spec.durable,
            "exclusive": queue.spec.exclusive,
            "auto_delete": queue.spec.auto_delete,
            "arguments": arguments_json(&queue.spec.arguments),
            "owner_connection": queue.owner,
            "messages": stats.ready + stats.unacked + stats.delayed,
            "messages_ready": stats.ready,
            "messages_unacknowledged": stats.unacked,
            "messages_delayed": stats.delayed,
            "message_bytes_ready": stats.ready_bytes,
            "consumers": stats.consumers,
            "message_stats": {
                "publish": stats.published,
                "publish_details": { "rate": rates.publish },
                "deliver_get": stats.delivered,
                "deliver_get_details": { "rate": rates.deliver },
                "ack": stats.acknowledged,
                "ack_details": { "rate": rates.ack },
            },
        }));
    }
    let stream = host
        .stream(name)
        .ok_or_else(|| ApiError::not_found("queue", name))?;
    let (records, bytes) = stream_depth(&stream).await?;
    Ok(json!({
        "name": name,
        "vhost": vhost,
        "type": "stream",
        "state": "running",
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "arguments": { "x-queue-type": "stream" },
        "partitions": stream.partition_count(),
        "messages": records,
        "messages_ready": records,
        "messages_unacknowledged": 0,
        "message_bytes": bytes,
    }))
}

async fn respond(api: &Api, entries: Vec<Entry>, query: &ListQuery) -> ApiResult<Json<Value>> {
    let selected = query.select(entries, |entry| &entry.name)?;
    let mut described = Vec::with_capacity(selected.items.len());
    for entry in &selected.items {
        match describe(api, &entry.vhost, &entry.name).await {
            Ok(value) => described.push(value),
            // Deleted since it was listed.
            Err(error) if error.status == StatusCode::NOT_FOUND => {}
            Err(error) => return Err(error),
        }
    }
    Ok(selected.respond(described))
}

fn entries_of(api: &Api, vhost: &str) -> ApiResult<Vec<Entry>> {
    let host = host_of(api, vhost)?;
    let mut names = host.queue_names();
    names.extend(host.stream_names());
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| Entry {
            vhost: vhost.to_owned(),
            name,
        })
        .collect())
}

pub async fn queues(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut entries = Vec::new();
    for vhost in caller.visible_vhosts() {
        entries.extend(entries_of(&api, &vhost)?);
    }
    respond(&api, entries, &query).await
}

pub async fn queues_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let entries = entries_of(&api, &vhost)?;
    respond(&api, entries, &query).await
}

pub async fn queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    Ok(Json(describe(&api, &vhost, &name).await?))
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct QueueBody {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

pub async fn put_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: QueueBody = parse(&body)?;
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::bad_request(format!(
            "queue name '{name}' is empty or reserved (amq.)"
        )));
    }
    if !(body.arguments.is_null() || body.arguments.is_object()) {
        return Err(ApiError::bad_request("arguments must be an object"));
    }
    caller.authorize(&vhost, Action::Configure, "queue", &name)?;
    let host = host_of(&api, &vhost)?;
    let spec = QueueSpec {
        durable: body.durable,
        exclusive: false,
        auto_delete: body.auto_delete,
        arguments: postino_core::catalog::arguments_from_json(&body.arguments),
    };
    let made = host.declare_queue_or_stream(&name, spec)?;
    Ok(created(made))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DeleteQuery {
    if_unused: bool,
    if_empty: bool,
}

pub async fn delete_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    caller.authorize(&vhost, Action::Configure, "queue", &name)?;
    let host = host_of(&api, &vhost)?;
    if host.stream(&name).is_some() {
        host.delete_stream(&name).await?;
    } else {
        host.delete_queue_if(&name, query.if_unused, query.if_empty)
            .await?;
    }
    api.rates.forget(&vhost, &name);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn purge(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.authorize(&vhost, Action::Read, "queue", &name)?;
    let host = host_of(&api, &vhost)?;
    let queue = host
        .queue(&name)
        .ok_or_else(|| ApiError::not_found("queue", &name))?;
    queue.purge().await?;
    Ok(StatusCode::NO_CONTENT)
}
