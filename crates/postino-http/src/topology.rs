//! Exchanges and bindings. In paths the default exchange is `amq.default`, as in RabbitMQ;
//! a binding is named by its `properties_key`: the routing key, followed by `~` and a hash of
//! its arguments when it has any.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use postino_core::catalog::{arguments_from_json, arguments_json};
use postino_core::{Action, Binding, Destination, ExchangeSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, parse};
use crate::listing::ListQuery;
use crate::{Api, created, host_of};

/// The exchange a path names.
pub fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

fn exchange_json(vhost: &str, name: &str, spec: &ExchangeSpec) -> Value {
    json!({
        "name": name,
        "vhost": vhost,
        "type": spec.kind.to_string(),
        "durable": spec.durable,
        "auto_delete": spec.auto_delete,
        "internal": spec.internal,
        "arguments": arguments_json(&spec.arguments),
    })
}

fn exchanges_in(api: &Api, vhost: &str) -> ApiResult<Vec<Value>> {
    let host = host_of(api, vhost)?;
    Ok(host
        .exchanges()
        .iter()
        .map(|(name, spec)| exchange_json(vhost, name, spec))
        .collect())
}

fn name_of(value: &Value) -> &str {
    value["name"].as_str().unwrap_or_default()
}

pub async fn exchanges(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for vhost in caller.visible_vhosts() {
        all.extend(exchanges_in(&api, &vhost)?);
    }
    let selected = query.select(all, name_of)?;
    let items = selected.items.clone();
    Ok(selected.respond(items))
}

pub async fn exchanges_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let selected = query.select(exchanges_in(&api, &vhost)?, name_of)?;
    let items = selected.items.clone();
    Ok(selected.respond(items))
}

pub async fn exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let host = host_of(&api, &vhost)?;
    let name = exchange_name(&name);
    let spec = host
        .exchange_spec(name)
        .ok_or_else(|| ApiError::not_found("exchange", name))?;
    Ok(Json(exchange_json(&vhost, name, &spec)))
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ExchangeBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

pub async fn put_exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: ExchangeBody = parse(&body)?;
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::forbidden(format!(
            "exchange name '{name}' is reserved"
        )));
    }
    caller.authorize(&vhost, Action::Configure, "exchange", &name)?;
    let host = host_of(&api, &vhost)?;
    let spec = ExchangeSpec::declared(
        body.kind.parse()?,
        body.durable,
        body.auto_delete,
        body.internal,
        arguments_from_json(&body.arguments),
    );
    Ok(created(host.declare_exchange(&name, spec)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DeleteExchangeQuery {
    if_unused: bool,
}

pub async fn delete_exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<DeleteExchangeQuery>,
) -> ApiResult<StatusCode> {
    let name = exchange_name(&name);
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::forbidden(format!(
            "exchange '{name}' is predeclared and cannot be deleted"
        )));
    }
    caller.authorize(&vhost, Action::Configure, "exchange", name)?;
    host_of(&api, &vhost)?.delete_exchange(name, query.if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

/// FNV-1a, 64 bits: a stable name for a binding's arguments.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn properties_key(binding: &Binding) -> String {
    if binding.arguments.is_empty() {
        binding.key.clone()
    } else {
        let arguments = arguments_json(&binding.arguments).to_string();
        format!("{}~{:016x}", binding.key, fnv1a(arguments.as_bytes()))
    }
}

fn binding_json(vhost: &str, binding: &Binding) -> Value {
    let (destination, kind) = match &binding.destination {
        Destination::Queue(queue) => (queue, "queue"),
        Destination::Exchange(exchange) => (exchange, "exchange"),
    };
    json!({
        "source": binding.source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": binding.key,
        "arguments": arguments_json(&binding.arguments),
        "properties_key": properties_key(binding),
    })
}

fn bindings_in(api: &Api, vhost: &str) -> ApiResult<Vec<Value>> {
    Ok(host_of(api, vhost)?
        .bindings()
        .iter()
        .map(|binding| binding_json(vhost, binding))
        .collect())
}

pub async fn bindings(State(api): State<Arc<Api>>, caller: Caller) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for vhost in caller.visible_vhosts() {
        all.extend(bindings_in(&api, &vhost)?);
    }
    Ok(Json(Value::Array(all)))
}

pub async fn bindings_of(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    Ok(Json(Value::Array(bindings_in(&api, &vhost)?)))
}

fn destination(kind: &str, name: &str) -> ApiResult<Destination> {
    match kind {
        "q" => Ok(Destination::Queue(name.to_owned())),
        "e" => Ok(Destination::Exchange(name.to_owned())),
        other => Err(ApiError::not_found("binding destination kind", other)),
    }
}

fn between(api: &Api, vhost: &str, source: &str, to: &Destination) -> ApiResult<Vec<Binding>> {
    Ok(host_of(api, vhost)?
        .bindings()
        .into_iter()
        .filter(|binding| binding.source == source && &binding.destination == to)
        .collect())
}

pub async fn bindings_between(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, target)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let to = destination(&kind, &target)?;
    let found = between(&api, &vhost, exchange_name(&source), &to)?;
    Ok(Json(
        found
            .iter()
            .map(|binding| binding_json(&vhost, binding))
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BindBody {
    routing_key: String,
    arguments: Value,
}

fn authorize_binding(
    caller: &Caller,
    vhost: &str,
    source: &str,
    to: &Destination,
) -> ApiResult<()> {
    let (kind, name) = match to {
        Destination::Queue(queue) => ("queue", queue),
        Destination::Exchange(exchange) => ("exchange", exchange),
    };
    caller.authorize(vhost, Action::Write, kind, name)?;
    caller.authorize(vhost, Action::Read, "exchange", source)
}

pub async fn bind(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, target)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let body: BindBody = parse(&body)?;
    let to = destination(&kind, &target)?;
    let source = exchange_name(&source);
    if source.is_empty() {
        return Err(ApiError::forbidden("the default exchange cannot be bound"));
    }
    authorize_binding(&caller, &vhost, source, &to)?;
    let binding = Binding {
        source: source.to_owned(),
        destination: to,
        key: body.routing_key,
        arguments: arguments_from_json(&body.arguments),
    };
    let location = properties_key(&binding);
    host_of(&api, &vhost)?.bind(binding)?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn find(api: &Api, vhost: &str, source: &str, to: &Destination, props: &str) -> ApiResult<Binding> {
    between(api, vhost, source, to)?
        .into_iter()
        .find(|binding| properties_key(binding) == props)
        .ok_or_else(|| ApiError::not_found("binding", props))
}

pub async fn binding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, target, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_sees(&vhost)?;
    let to = destination(&kind, &target)?;
    let found = find(&api, &vhost, exchange_name(&source), &to, &props)?;
    Ok(Json(binding_json(&vhost, &found)))
}

pub async fn unbind(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, target, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let to = destination(&kind, &target)?;
    let source = exchange_name(&source);
    authorize_binding(&caller, &vhost, source, &to)?;
    let found = find(&api, &vhost, source, &to, &props)?;
    host_of(&api, &vhost)?.unbind(&found)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_types::{HeaderValue, Headers};

    #[test]
    fn a_binding_is_named_by_its_key_and_a_hash_of_its_arguments() {
        let mut binding = Binding {
            source: "x".into(),
            destination: Destination::Queue("q".into()),
            key: "a.b".into(),
            arguments: Headers::new(),
        };
        assert_eq!(properties_key(&binding), "a.b");
        binding
            .arguments
            .insert("x-match".into(), HeaderValue::Text("any".into()));
        let named = properties_key(&binding);
        assert!(named.starts_with("a.b~") && named.len() == "a.b~".len() + 16);
        assert_eq!(named, properties_key(&binding.clone()));
    }
}
