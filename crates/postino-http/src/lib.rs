//! The management HTTP API (RabbitMQ's paths and JSON shapes, postino's additions under
//! `/api/streams` and `/api/groups`), `/metrics` in Prometheus text format, and
//! `/api/openapi.json` describing every endpoint. See `docs/management.md`.

mod admin;
mod auth;
mod connections;
mod error;
mod listing;
mod messages;
mod metrics;
mod openapi;
mod queues;
mod rates;
mod streams;
mod tls;
mod topology;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{delete, get, post};
use postino_core::Broker;
use tokio::net::TcpListener;

pub use error::ApiError;

/// A listener the node runs, as the overview lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: String,
    pub address: SocketAddr,
}

/// What every handler shares.
#[derive(Debug)]
pub struct Api {
    broker: Arc<Broker>,
    started: Instant,
    listeners: Vec<Listener>,
    rates: rates::Rates,
}

impl Api {
    /// The API over `broker`; `listeners` are the node's, for the overview.
    #[must_use]
    pub fn new(broker: Arc<Broker>, listeners: Vec<Listener>) -> Arc<Self> {
        Arc::new(Self {
            broker,
            started: Instant::now(),
            listeners,
            rates: rates::Rates::default(),
        })
    }
}

/// Every route of the API.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/overview", get(admin::overview))
        .route("/api/nodes", get(admin::nodes))
        .route("/api/whoami", get(admin::whoami))
        .route("/api/health/checks/alarms", get(admin::alarms_check))
        .route("/api/vhosts", get(admin::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(admin::vhost)
                .put(admin::put_vhost)
                .delete(admin::delete_vhost),
        )
        .route("/api/users", get(admin::users))
        .route(
            "/api/users/{user}",
            get(admin::user)
                .put(admin::put_user)
                .delete(admin::delete_user),
        )
        .route("/api/permissions", get(admin::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::permission)
                .put(admin::put_permission)
                .delete(admin::delete_permission),
        )
        .route("/api/definitions", get(admin::export).post(admin::import))
        .route("/api/exchanges", get(topology::exchanges))
        .route("/api/exchanges/{vhost}", get(topology::exchanges_of))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(topology::exchange)
                .put(topology::put_exchange)
                .delete(topology::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route("/api/connections", get(connections::connections))
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::connections_of),
        )
        .route(
            "/api/connections/{name}",
            get(connections::connection).delete(connections::close_connection),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::channels_of_connection),
        )
        .route("/api/channels", get(connections::channels))
        .route(
            "/api/vhosts/{vhost}/channels",
            get(connections::channels_of_vhost),
        )
        .route("/api/channels/{channel}", get(connections::channel))
        .route("/api/consumers", get(connections::consumers))
        .route("/api/consumers/{vhost}", get(connections::consumers_of))
        .route("/api/queues", get(queues::queues))
        .route("/api/queues/{vhost}", get(queues::queues_of))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::queue)
                .put(queues::put_queue)
                .delete(queues::delete_queue),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(queues::purge))
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route("/api/bindings", get(topology::bindings))
        .route("/api/bindings/{vhost}", get(topology::bindings_of))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(topology::bindings_between).post(topology::bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(topology::binding).delete(topology::unbind),
        )
        .route("/api/streams", get(streams::streams))
        .route("/api/streams/{vhost}", get(streams::streams_of))
        .route(
            "/api/streams/{vhost}/{name}",
            get(streams::stream)
                .put(streams::put_stream)
                .delete(streams::delete_stream),
        )
        .route("/api/groups", get(streams::groups))
        .route("/api/groups/{vhost}", get(streams::groups_of))
        .route(
            "/api/groups/{vhost}/{name}",
            get(streams::group).delete(streams::delete_group),
        )
        .route("/api/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::metrics))
        .route("/api/aliveness-test/{vhost}", get(admin::aliveness))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .with_state(api)
}

/// Serves the API on `listener` until the task is dropped.
///
/// # Errors
/// When accepting connections fails for good.
pub async fn serve(listener: TcpListener, api: Arc<Api>) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(api).into_make_service_with_connect_info::<tls::Peer>(),
    )
    .await
}

/// Serves the API over HTTPS on `listener` until the task is dropped. A request without an
/// `Authorization` header from a client whose certificate the acceptor verified is made as
/// the user the certificate names.
///
/// # Errors
/// When accepting connections fails for good.
pub async fn serve_tls(
    listener: TcpListener,
    api: Arc<Api>,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    axum::serve(
        tls::TlsListener::new(listener, acceptor)?,
        router(api).into_make_service_with_connect_info::<tls::Peer>(),
    )
    .await
}

/// 201 when a PUT made something, 204 when it existed.
fn created(made: bool) -> axum::http::StatusCode {
    if made {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::NO_CONTENT
    }
}

/// The virtual host a path names (RabbitMQ's `%2F` arrives decoded as `/`).
fn host_of(api: &Api, vhost: &str) -> Result<Arc<postino_core::VirtualHost>, ApiError> {
    api.broker
        .vhost(vhost)
        .ok_or_else(|| ApiError::not_found("vhost", vhost))
}
