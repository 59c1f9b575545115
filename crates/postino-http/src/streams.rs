//! postino's additions: streams with their partitions' offsets, and consumer groups with
//! their members and committed offsets.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use postino_core::{Action, StreamSpec, VirtualHost};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::listing::ListQuery;
use crate::{Api, created, host_of};

async fn describe_stream(host: &VirtualHost, name: &str) -> ApiResult<Value> {
    let stream = host
        .stream(name)
        .ok_or_else(|| ApiError::not_found("stream", name))?;
    let mut partitions = Vec::new();
    let (mut messages, mut bytes) = (0, 0);
    for partition in 0..stream.partition_count() {
        let stats = stream.partition(partition)?.stats().await?;
        messages += stats.next - stats.earliest;
        bytes += stats.size_bytes;
        partitions.push(json!({
            "partition": partition,
            "earliest": stats.earliest,
            "high_watermark": stats.high_watermark,
            "last_stable_offset": stats.last_stable_offset,
            "next": stats.next,
            "size_bytes": stats.size_bytes,
            "producers": stats.producers,
        }));
    }
    let mut described = stream.spec().to_json();
    described["name"] = json!(name);
    described["vhost"] = json!(host.name());
    described["messages"] = json!(messages);
    described["size_bytes"] = json!(bytes);
    described["partition_offsets"] = Value::Array(partitions);
    Ok(described)
}

async fn list_streams(api: &Api, vhosts: Vec<String>, query: &ListQuery) -> ApiResult<Json<Value>> {
    let mut entries = Vec::new();
    for vhost in vhosts {
        let host = host_of(api, &vhost)?;
        entries.extend(
            host.stream_names()
                .into_iter()
                .map(|name| (Arc::clone(&host), name)),
        );
    }
    let selected = query.select(entries, |(_, name)| name)?;
    let mut described = Vec::new();
    for (host, name) in &selected.items {
        match describe_stream(host, name).await {
            Ok(value) => described.push(value),
            Err(error) if error.status == StatusCode::NOT_FOUND => {}
            Err(error) => return Err(error),
        }
    }
    Ok(selected.respond(described))
}

pub async fn streams(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let vhosts = caller.visible_vhosts();
    list_streams(&api, vhosts, &query).await
}

pub async fn streams_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    list_streams(&api, vec![vhost], &query).await
}

pub async fn stream(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let host = host_of(&api, &vhost)?;
    Ok(Json(describe_stream(&host, &name).await?))
}

/// Declares a stream from its spec (`partitions`, `retention_ms`, `retention_bytes`,
/// `segment_bytes`, `durability`, `compaction_tombstone_ms`); a larger `partitions` on an
/// existing stream adds partitions.
pub async fn put_stream(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: Value = crate::error::parse(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let spec = StreamSpec::from_json(&body).map_err(ApiError::bad_request)?;
    spec.check()?;
    caller.authorize(&vhost, Action::Configure, "queue", &name)?;
    let host = host_of(&api, &vhost)?;
    if let Some(existing) = host.stream(&name) {
        let mut grown = existing.spec();
        grown.partitions = spec.partitions;
        if grown == spec && spec.partitions > existing.partition_count() {
            existing.add_partitions(spec.partitions)?;
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    let (_, made) = host.declare_stream(&name, spec)?;
    Ok(created(made))
}

pub async fn delete_stream(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.authorize(&vhost, Action::Configure, "queue", &name)?;
    host_of(&api, &vhost)?.delete_stream(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn describe_group(host: &VirtualHost, name: &str) -> ApiResult<Value> {
    let groups = host.groups();
    let description = groups
        .describe(name)
        .await?
        .ok_or_else(|| ApiError::not_found("group", name))?;
    let offsets: Vec<Value> = groups
        .offsets(name)
        .await?
        .into_iter()
        .map(|((stream, partition), committed)| {
            json!({
                "stream": stream,
                "partition": partition,
                "offset": committed.offset,
                "metadata": committed.metadata,
                "commit_timestamp_ms": committed.commit_timestamp_ms,
            })
        })
        .collect();
    let members: Vec<Value> = description
        .members
        .iter()
        .map(|member| {
            json!({
                "member_id": member.member_id,
                "instance_id": member.instance_id,
                "client_id": member.client_id,
            })
        })
        .collect();
    Ok(json!({
        "name": name,
        "vhost": host.name(),
        "state": format!("{:?}", description.state),
        "generation": description.generation,
        "protocol": description.protocol,
        "leader": description.leader,
        "members": members,
        "offsets": offsets,
    }))
}

async fn list_groups(api: &Api, vhosts: Vec<String>) -> ApiResult<Json<Value>> {
    let mut described = Vec::new();
    for vhost in vhosts {
        let host = host_of(api, &vhost)?;
        for name in host.groups().list().await? {
            match describe_group(&host, &name).await {
                Ok(value) => described.push(value),
                Err(error) if error.status == StatusCode::NOT_FOUND => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(Json(Value::Array(described)))
}

pub async fn groups(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Value>> {
    let vhosts = caller.visible_vhosts();
    list_groups(&api, vhosts).await
}

pub async fn groups_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    list_groups(&api, vec![vhost]).await
}

pub async fn group(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let host = host_of(&api, &vhost)?;
    Ok(Json(describe_group(&host, &name).await?))
}

pub async fn delete_group(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.authorize(&vhost, Action::Configure, "group", &name)?;
    host_of(&api, &vhost)?.groups().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
