//! Connections, channels and consumers, in RabbitMQ's shapes: listings (paged and filtered like
//! the others), one connection, and closing a connection (`DELETE`, with the reason from the
//! `X-Reason` header). Administrators and monitoring users see every connection; other users
//! see their own, and may close them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use postino_core::{Alarm, ChannelInfo, Connection, ConsumerInfo};
use serde_json::{Value, json};

use crate::Api;
use crate::admin::node_name;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::listing::ListQuery;

/// The reason a closed client is given when the request names none (RabbitMQ's text).
const CLOSED_BY_API: &str = "Closed via management plugin";

fn may_see(caller: &Caller, connection: &Connection) -> bool {
    caller.sees_every_connection() || connection.session().user == caller.name
}

/// The connections the caller may see, in `vhost` when one is named.
fn visible(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Arc<Connection>> {
    let mut connections: Vec<Arc<Connection>> = api
        .broker
        .connections()
        .list()
        .into_iter()
        .filter(|connection| may_see(caller, connection))
        .filter(|connection| vhost.is_none_or(|vhost| connection.session().vhost == vhost))
        .collect();
    connections.sort_by(|left, right| left.name().cmp(right.name()));
    connections
}

/// The connections to `vhost` the caller may see.
fn in_vhost(api: &Api, caller: &Caller, vhost: &str) -> ApiResult<Vec<Arc<Connection>>> {
    caller.require_sees(vhost)?;
    crate::host_of(api, vhost)?;
    Ok(visible(api, caller, Some(vhost)))
}

fn find(api: &Api, caller: &Caller, name: &str) -> ApiResult<Arc<Connection>> {
    api.broker
        .connections()
        .find(name)
        .filter(|connection| may_see(caller, connection))
        .ok_or_else(|| ApiError::not_found("connection", name))
}

fn state(api: &Api) -> &'static str {
    if api.broker.resources().alarm == Alarm::Clear {
        "running"
    } else {
        "blocked"
    }
}

fn connection_json(api: &Api, connection: &Connection) -> Value {
    let session = connection.session();
    let origin = connection.origin();
    let traffic = connection.traffic().counts();
    let host = origin.local.map(|local| local.ip().to_string());
    let peer_host = origin.peer.map(|peer| peer.ip().to_string());
    json!({
        "name": connection.name(),
        "node": node_name(),
        "type": "network",
        "protocol": origin.protocol,
        "user": session.user,
        "vhost": session.vhost,
        "host": host,
        "port": origin.local.map(|local| local.port()),
        "peer_host": peer_host,
        "peer_port": origin.peer.map(|peer| peer.port()),
        "ssl": origin.tls,
        "state": state(api),
        "channels": session.channels.len(),
        "connected_at": connection.connected_at_ms(),
        "recv_oct": traffic.received_bytes,
        "recv_cnt": traffic.received_reads,
        "send_oct": traffic.sent_bytes,
        "send_cnt": traffic.sent_writes,
        "auth_mechanism": session.auth_mechanism,
        "timeout": session.heartbeat_s,
        "frame_max": session.frame_max,
        "channel_max": session.channel_max,
        "user_provided_name": session.client_properties.get("connection_name"),
        "client_properties": session.client_properties,
    })
}

fn channel_name(connection: &Connection, number: u16) -> String {
    format!("{} ({number})", connection.name())
}

fn connection_details(connection: &Connection) -> Value {
    let peer = connection.origin().peer;
    json!({
        "name": connection.name(),
        "peer_host": peer.map(|peer| peer.ip().to_string()),
        "peer_port": peer.map(|peer| peer.port()),
    })
}

fn channel_json(
    connection: &Connection,
    user: &str,
    vhost: &str,
    number: u16,
    channel: &ChannelInfo,
) -> Value {
    let unacked = channel.unacked.as_ref().map_or(0, |probe| probe());
    json!({
        "name": channel_name(connection, number),
        "number": number,
        "node": node_name(),
        "connection_details": connection_details(connection),
        "user": user,
        "vhost": vhost,
        "state": "running",
        "confirm": channel.confirm,
        "transactional": channel.transactional,
        "prefetch_count": channel.prefetch_count,
        "global_prefetch_count": channel.global_prefetch_count,
        "consumer_count": channel.consumers.len(),
        "messages_unacknowledged": unacked,
    })
}

fn consumer_json(
    connection: &Connection,
    user: &str,
    vhost: &str,
    number: u16,
    tag: &str,
    consumer: &ConsumerInfo,
) -> Value {
    json!({
        "consumer_tag": tag,
        "channel_details": {
            "name": channel_name(connection, number),
            "number": number,
            "connection_name": connection.name(),
            "peer_host": connection.origin().peer.map(|peer| peer.ip().to_string()),
            "peer_port": connection.origin().peer.map(|peer| peer.port()),
            "user": user,
        },
        "queue": { "name": consumer.queue, "vhost": vhost },
        "ack_required": consumer.ack_required,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch_count,
        "active": true,
        "activity_status": "up",
        "arguments": consumer.arguments,
    })
}

/// Every channel of `connections`, described.
fn channels_of(connections: &[Arc<Connection>]) -> Vec<(String, Value)> {
    let mut channels = Vec::new();
    for connection in connections {
        let session = connection.session();
        for (number, channel) in &session.channels {
            let value = channel_json(connection, &session.user, &session.vhost, *number, channel);
            channels.push((channel_name(connection, *number), value));
        }
    }
    channels
}

fn respond(items: Vec<(String, Value)>, query: &ListQuery) -> ApiResult<Json<Value>> {
    let selected = query.select(items, |(name, _)| name)?;
    let described = selected
        .items
        .iter()
        .map(|(_, value)| value.clone())
        .collect();
    Ok(selected.respond(described))
}

fn connections_listed(
    api: &Api,
    connections: Vec<Arc<Connection>>,
    query: &ListQuery,
) -> ApiResult<Json<Value>> {
    let items = connections
        .iter()
        .map(|connection| {
            (
                connection.name().to_owned(),
                connection_json(api, connection),
            )
        })
        .collect();
    respond(items, query)
}

pub async fn connections(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    connections_listed(&api, visible(&api, &caller, None), &query)
}

pub async fn connections_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    connections_listed(&api, in_vhost(&api, &caller, &vhost)?, &query)
}

pub async fn connection(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let connection = find(&api, &caller, &name)?;
    Ok(Json(connection_json(&api, &connection)))
}

/// Closes a connection: its client is told the reason (AMQP `connection.close` 320).
pub async fn close_connection(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let connection = find(&api, &caller, &name)?;
    let reason = headers
        .get("x-reason")
        .and_then(|value| value.to_str().ok())
        .filter(|reason| !reason.is_empty())
        .unwrap_or(CLOSED_BY_API);
    tracing::info!(connection = %name, by = %caller.name, %reason, "closing a connection");
    connection.close(reason);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn channels_of_connection(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let connection = find(&api, &caller, &name)?;
    respond(channels_of(&[connection]), &query)
}

pub async fn channels(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    respond(channels_of(&visible(&api, &caller, None)), &query)
}

pub async fn channels_of_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    respond(channels_of(&in_vhost(&api, &caller, &vhost)?), &query)
}

pub async fn channel(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    channels_of(&visible(&api, &caller, None))
        .into_iter()
        .find(|(channel, _)| *channel == name)
        .map(|(_, value)| Json(value))
        .ok_or_else(|| ApiError::not_found("channel", &name))
}

fn consumers_listed(connections: &[Arc<Connection>], query: &ListQuery) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for connection in connections {
        let session = connection.session();
        for (number, channel) in &session.channels {
            for (tag, consumer) in &channel.consumers {
                let value = consumer_json(
                    connection,
                    &session.user,
                    &session.vhost,
                    *number,
                    tag,
                    consumer,
                );
                items.push((tag.clone(), value));
            }
        }
    }
    respond(items, query)
}

pub async fn consumers(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    consumers_listed(&visible(&api, &caller, None), &query)
}

pub async fn consumers_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    consumers_listed(&in_vhost(&api, &caller, &vhost)?, &query)
}
