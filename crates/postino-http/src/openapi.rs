//! `/api/openapi.json`: an OpenAPI 3.1 document of every endpoint, from one table.

use axum::Json;
use serde_json::{Map, Value, json};

/// Every endpoint: method, path, what it does.
pub const ENDPOINTS: &[(&str, &str, &str)] = &[
    (
        "get",
        "/api/overview",
        "Totals, listeners, alarms and the node's version",
    ),
    (
        "get",
        "/api/nodes",
        "The node: memory and disk against their limits, alarms",
    ),
    ("get", "/api/whoami", "The authenticated user and its tags"),
    (
        "get",
        "/api/health/checks/alarms",
        "200 without a resource alarm, 503 with one",
    ),
    (
        "get",
        "/api/aliveness-test/{vhost}",
        "Declares a test queue, publishes to it and gets the message back",
    ),
    ("get", "/api/vhosts", "Virtual hosts"),
    ("get", "/api/vhosts/{vhost}", "One virtual host"),
    (
        "put",
        "/api/vhosts/{vhost}",
        "Creates a virtual host (administrator)",
    ),
    (
        "delete",
        "/api/vhosts/{vhost}",
        "Deletes a virtual host and everything in it (administrator)",
    ),
    ("get", "/api/users", "Users (administrator)"),
    ("get", "/api/users/{user}", "One user (administrator)"),
    (
        "put",
        "/api/users/{user}",
        "Creates or updates a user: password or password_hash, tags (administrator)",
    ),
    (
        "delete",
        "/api/users/{user}",
        "Deletes a user and its permissions (administrator)",
    ),
    (
        "get",
        "/api/permissions",
        "Every user's permissions (administrator)",
    ),
    (
        "get",
        "/api/permissions/{vhost}/{user}",
        "One user's permissions on a virtual host",
    ),
    (
        "put",
        "/api/permissions/{vhost}/{user}",
        "Sets configure, write and read patterns (administrator)",
    ),
    (
        "delete",
        "/api/permissions/{vhost}/{user}",
        "Clears a user's permissions on a virtual host",
    ),
    (
        "get",
        "/api/definitions",
        "Exports users, vhosts, permissions, exchanges, queues, bindings and streams",
    ),
    ("post", "/api/definitions", "Imports a definitions document"),
    (
        "get",
        "/api/exchanges",
        "Exchanges of every visible virtual host (paged with page, page_size)",
    ),
    (
        "get",
        "/api/exchanges/{vhost}",
        "Exchanges of a virtual host",
    ),
    (
        "get",
        "/api/exchanges/{vhost}/{name}",
        "One exchange (the default one is amq.default)",
    ),
    (
        "put",
        "/api/exchanges/{vhost}/{name}",
        "Declares an exchange: type, durable, auto_delete, internal, arguments",
    ),
    (
        "delete",
        "/api/exchanges/{vhost}/{name}",
        "Deletes an exchange (if-unused=true to require no bindings)",
    ),
    (
        "post",
        "/api/exchanges/{vhost}/{name}/publish",
        "Publishes a message; answers whether it was routed",
    ),
    (
        "get",
        "/api/connections",
        "Client connections: user, vhost, peer, TLS, channels, bytes in and out",
    ),
    (
        "get",
        "/api/vhosts/{vhost}/connections",
        "The connections to a virtual host",
    ),
    ("get", "/api/connections/{name}", "One connection"),
    (
        "delete",
        "/api/connections/{name}",
        "Closes a connection; the client is told the X-Reason header",
    ),
    (
        "get",
        "/api/connections/{name}/channels",
        "The channels of one connection",
    ),
    (
        "get",
        "/api/channels",
        "Channels: confirm and transaction mode, prefetch, consumers, unacknowledged",
    ),
    (
        "get",
        "/api/vhosts/{vhost}/channels",
        "The channels of a virtual host",
    ),
    ("get", "/api/channels/{channel}", "One channel"),
    (
        "get",
        "/api/consumers",
        "Consumers: tag, queue, channel, acknowledgement mode, prefetch",
    ),
    (
        "get",
        "/api/consumers/{vhost}",
        "The consumers of a virtual host",
    ),
    (
        "get",
        "/api/queues",
        "Queues of every visible virtual host with counts and rates (paged)",
    ),
    (
        "get",
        "/api/queues/{vhost}",
        "Queues of a virtual host (paged)",
    ),
    ("get", "/api/queues/{vhost}/{name}", "One queue"),
    (
        "put",
        "/api/queues/{vhost}/{name}",
        "Declares a queue: durable, auto_delete, arguments (x-queue-type: stream for a stream)",
    ),
    (
        "delete",
        "/api/queues/{vhost}/{name}",
        "Deletes a queue (if-unused, if-empty)",
    ),
    (
        "delete",
        "/api/queues/{vhost}/{name}/contents",
        "Purges a queue's ready messages",
    ),
    (
        "post",
        "/api/queues/{vhost}/{name}/get",
        "Gets messages: count, ackmode, encoding, truncate",
    ),
    (
        "get",
        "/api/bindings",
        "Bindings of every visible virtual host",
    ),
    ("get", "/api/bindings/{vhost}", "Bindings of a virtual host"),
    (
        "get",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
        "Bindings from an exchange to a queue (q) or exchange (e)",
    ),
    (
        "post",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
        "Binds: routing_key, arguments; Location names the binding",
    ),
    (
        "get",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
        "One binding by its properties key",
    ),
    (
        "delete",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
        "Removes a binding",
    ),
    (
        "get",
        "/api/streams",
        "Streams with their partitions' offsets (paged)",
    ),
    (
        "get",
        "/api/streams/{vhost}",
        "Streams of a virtual host (paged)",
    ),
    ("get", "/api/streams/{vhost}/{name}", "One stream"),
    (
        "put",
        "/api/streams/{vhost}/{name}",
        "Declares a stream (partitions, retention_ms, retention_bytes, …) or adds partitions",
    ),
    (
        "delete",
        "/api/streams/{vhost}/{name}",
        "Deletes a stream and its records",
    ),
    (
        "get",
        "/api/groups",
        "Consumer groups with members and committed offsets",
    ),
    (
        "get",
        "/api/groups/{vhost}",
        "Consumer groups of a virtual host",
    ),
    ("get", "/api/groups/{vhost}/{name}", "One consumer group"),
    (
        "delete",
        "/api/groups/{vhost}/{name}",
        "Deletes an empty consumer group",
    ),
    ("get", "/api/openapi.json", "This document"),
    ("get", "/metrics", "Prometheus metrics (no authentication)"),
];

/// The document.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for (method, path, summary) in ENDPOINTS {
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let open = *path == "/metrics";
        let mut operation = json!({
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK" },
                "201": { "description": "Created" },
                "204": { "description": "Done; nothing to return" },
                "400": { "description": "Bad request: {\"error\", \"reason\"}" },
                "401": { "description": "No or wrong credentials" },
                "403": { "description": "Not allowed for this user" },
                "404": { "description": "No such object" },
            },
        });
        if open {
            operation["security"] = json!([]);
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "postino management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "RabbitMQ's management API paths and JSON shapes, with postino's streams and groups.",
        },
        "components": { "securitySchemes": { "basic": { "type": "http", "scheme": "basic" } } },
        "security": [{ "basic": [] }],
        "paths": paths,
    })
}

pub async fn document() -> Json<Value> {
    Json(openapi())
}
