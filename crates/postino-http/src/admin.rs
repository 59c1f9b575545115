//! The node, virtual hosts, users, permissions and definitions.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use postino_core::catalog::HASHING_ALGORITHM;
use postino_core::{Alarm, Definitions, GetSpec, QueueSpec, Tags};
use postino_types::Message;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, parse};
use crate::{Api, created, host_of};

fn alarm_name(alarm: Alarm) -> Option<&'static str> {
    match alarm {
        Alarm::Clear => None,
        Alarm::Memory => Some("memory"),
        Alarm::Disk => Some("disk"),
    }
}

/// Totals over every queue the caller sees.
async fn totals(api: &Api, caller: &Caller) -> ApiResult<Value> {
    let (mut queues, mut streams, mut exchanges, mut consumers) = (0, 0, 0, 0);
    let (mut ready, mut unacked, mut delayed) = (0, 0, 0);
    let mut vhosts = 0;
    for name in api.broker.vhost_names() {
        if !caller.sees(&name) {
            continue;
        }
        let Some(host) = api.broker.vhost(&name) else {
            continue;
        };
        vhosts += 1;
        exchanges += host.exchanges().len();
        streams += host.stream_names().len();
        for queue in host.queue_names() {
            let Some(handle) = host.queue(&queue) else {
                continue;
            };
            let stats = handle.stats().await?;
            queues += 1;
            consumers += stats.consumers;
            ready += stats.ready;
            unacked += stats.unacked;
            delayed += stats.delayed;
        }
    }
    Ok(json!({
        "object_totals": {
            "vhosts": vhosts,
            "queues": queues,
            "streams": streams,
            "exchanges": exchanges,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked + delayed,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
            "messages_delayed": delayed,
        },
    }))
}

pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("postino@{host}")
}

pub async fn overview(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Value>> {
    let mut body = totals(&api, &caller).await?;
    let resources = api.broker.resources();
    body["product_name"] = json!("postino");
    body["product_version"] = json!(env!("CARGO_PKG_VERSION"));
    body["management_version"] = json!(env!("CARGO_PKG_VERSION"));
    body["node"] = json!(node_name());
    body["uptime_ms"] = json!(api.started.elapsed().as_millis() as u64);
    body["alarms"] = json!(alarm_name(resources.alarm).into_iter().collect::<Vec<_>>());
    body["listeners"] = api
        .listeners
        .iter()
        .map(|listener| {
            json!({
                "protocol": listener.protocol,
                "ip_address": listener.address.ip().to_string(),
                "port": listener.address.port(),
            })
        })
        .collect();
    Ok(Json(body))
}

pub async fn nodes(State(api): State<Arc<Api>>, _caller: Caller) -> Json<Value> {
    let resources = api.broker.resources();
    Json(json!([{
        "name": node_name(),
        "type": "disc",
        "running": true,
        "uptime": api.started.elapsed().as_millis() as u64,
        "mem_used": resources.memory_bytes,
        "mem_limit": resources.memory_bytes_max,
        "mem_alarm": resources.alarm == Alarm::Memory,
        "disk_free": resources.disk_free_bytes,
        "disk_free_limit": resources.disk_free_bytes_min,
        "disk_free_alarm": resources.alarm == Alarm::Disk,
    }]))
}

pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({ "name": caller.name, "tags": caller.tags }))
}

/// RabbitMQ's alarms health check: 200 without alarms, 503 naming the alarm.
pub async fn alarms_check(
    State(api): State<Arc<Api>>,
    _caller: Caller,
) -> (StatusCode, Json<Value>) {
    match alarm_name(api.broker.resources().alarm) {
        None => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Some(alarm) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "reason": format!("{alarm} alarm in effect") })),
        ),
    }
}

/// Declares a transient `aliveness-test` queue, publishes a message to it and gets it back.
pub async fn aliveness(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let host = host_of(&api, &vhost)?;
    let (queue, _) = host.declare_queue("aliveness-test", QueueSpec::transient())?;
    host.publish("", "aliveness-test", Message::new("test"))
        .await?;
    let spec = GetSpec {
        auto_ack: true,
        lease_ms: None,
    };
    match queue.get(spec, Some(Duration::from_secs(5))).await? {
        Some(_) => Ok(Json(json!({ "status": "ok" }))),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "failed",
            "the test message did not come back",
        )),
    }
}

fn vhost_json(name: &str) -> Value {
    json!({ "name": name, "description": "", "tags": [] })
}

pub async fn vhosts(caller: Caller) -> Json<Value> {
    Json(
        caller
            .visible_vhosts()
            .iter()
            .map(|name| vhost_json(name))
            .collect(),
    )
}

pub async fn vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    host_of(&api, &vhost)?;
    Ok(Json(vhost_json(&vhost)))
}

pub async fn put_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if vhost.is_empty() {
        return Err(ApiError::bad_request("a vhost name must not be empty"));
    }
    let existed = api.broker.vhost(&vhost).is_some();
    api.broker.create_vhost(&vhost)?;
    Ok(created(!existed))
}

pub async fn delete_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    api.broker.delete_vhost(&vhost).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(name: &str, password_hash: &str, tags: &[String]) -> Value {
    json!({
        "name": name,
        "tags": tags,
        "password_hash": password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
    })
}

pub async fn users(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(
        api.broker
            .access()
            .users()
            .iter()
            .map(|user| user_json(&user.name, &user.password_hash, &user.tags))
            .collect(),
    ))
}

pub async fn user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    api.broker
        .access()
        .users()
        .iter()
        .find(|user| user.name == name)
        .map(|user| Json(user_json(&user.name, &user.password_hash, &user.tags)))
        .ok_or_else(|| ApiError::not_found("user", &name))
}

#[derive(Debug, Deserialize)]
struct UserBody {
    password: Option<String>,
    password_hash: Option<String>,
    #[serde(default)]
    tags: Tags,
}

pub async fn put_user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let body: UserBody = parse(&body)?;
    let access = api.broker.access();
    let existed = access.tags(&name).is_some();
    match (body.password, body.password_hash) {
        (Some(password), _) => {
            let broker = Arc::clone(&api.broker);
            let user = name.clone();
            tokio::task::spawn_blocking(move || {
                broker
                    .access()
                    .put_user(&user, Some(&password), body.tags.0)
            })
            .await
            .map_err(|error| ApiError::bad_request(error.to_string()))??;
        }
        (None, Some(hash)) if !hash.is_empty() => {
            access.put_user_hashed(&name, &hash, body.tags.0)?
        }
        _ if existed => access.put_user(&name, None, body.tags.0)?,
        _ => {
            return Err(ApiError::bad_request(
                "a new user needs a password or a password_hash",
            ));
        }
    }
    Ok(created(!existed))
}

pub async fn delete_user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    api.broker.access().delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

fn permission_json(permission: &postino_core::PermissionInfo) -> Value {
    json!({
        "user": permission.user,
        "vhost": permission.vhost,
        "configure": permission.configure,
        "write": permission.write,
        "read": permission.read,
    })
}

pub async fn permissions(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(
        api.broker
            .access()
            .permissions()
            .iter()
            .map(permission_json)
            .collect(),
    ))
}

pub async fn permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    api.broker
        .access()
        .permissions()
        .iter()
        .find(|permission| permission.vhost == vhost && permission.user == user)
        .map(|permission| Json(permission_json(permission)))
        .ok_or_else(|| ApiError::not_found("permission", &format!("{user} on {vhost}")))
}

#[derive(Debug, Deserialize)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

pub async fn put_permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let body: PermissionBody = parse(&body)?;
    host_of(&api, &vhost)?;
    let access = api.broker.access();
    let existed = access.check_vhost(&user, &vhost).is_ok();
    access.set_permissions(&user, &vhost, &body.configure, &body.write, &body.read)?;
    Ok(created(!existed))
}

pub async fn delete_permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    api.broker.access().clear_permissions(&user, &vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn export(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Definitions>> {
    caller.require_admin()?;
    Ok(Json(api.broker.export_definitions()))
}

pub async fn import(
    State(api): State<Arc<Api>>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let definitions: Definitions = parse(&body)?;
    let broker = Arc::clone(&api.broker);
    // Users with plain passwords are hashed here: argon2 is slow, keep it off the runtime.
    let report = tokio::task::spawn_blocking(move || broker.import_definitions(&definitions))
        .await
        .map_err(|error| ApiError::bad_request(error.to_string()))??;
    Ok(Json(json!(report)))
}
