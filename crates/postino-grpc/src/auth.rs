//! Who is calling: the `authorization` metadata (`Basic base64(user:password)`); without it,
//! the user a verified TLS client certificate names, else `guest`;
//! checked like an AMQP login (`Broker::login`: argon2 off the runtime's workers, failed logins
//! counted per address), and the permission checks of each call.

use std::sync::Arc;

use base64::Engine;
use postino_core::{Action, VirtualHost, user_of_certificate};
use postino_types::{Clock, SystemClock};
use tonic::{Request, Status};

use crate::{Shared, status_of, vhost_of};

/// An authenticated caller on a virtual host it may use.
#[derive(Debug)]
pub(crate) struct Caller {
    pub user: String,
    pub host: Arc<VirtualHost>,
    shared: Arc<Shared>,
}

impl Caller {
    /// Checks that the caller may `action` the resource `name` of `kind`.
    pub(crate) fn may(&self, action: Action, kind: &str, name: &str) -> Result<(), Status> {
        self.shared
            .broker
            .access()
            .authorize(&self.user, self.host.name(), action, kind, name)
            .map_err(|error| status_of(&error))
    }
}

fn credentials<T>(request: &Request<T>) -> Result<(String, String), Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(("guest".to_owned(), "guest".to_owned()));
    };
    let refused = || Status::unauthenticated("authorization is not Basic base64(user:password)");
    let text = value.to_str().map_err(|_| refused())?;
    let encoded = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
        .ok_or_else(refused)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| refused())?;
    let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
    let (user, password) = decoded.split_once(':').ok_or_else(refused)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Authenticates the caller of `request` and opens `vhost` for it.
pub(crate) async fn caller<T>(
    shared: &Arc<Shared>,
    request: &Request<T>,
    vhost: &str,
) -> Result<Caller, Status> {
    let peer = request.remote_addr().map(|address| address.ip());
    let certified = request.peer_certs().and_then(|chain| {
        chain
            .first()
            .and_then(|leaf| user_of_certificate(leaf.as_ref()))
    });
    if request.metadata().get("authorization").is_none()
        && let Some(user) = certified
    {
        shared
            .broker
            .access()
            .authenticate_certificate(&user, peer)
            .map_err(|error| Status::unauthenticated(error.to_string()))?;
        return open(shared, user, vhost);
    }
    let (user, password) = credentials(request)?;
    let checked = shared
        .broker
        .login(&user, &password, peer, SystemClock.now_ms())
        .await;
    if let Err(error) = checked {
        tracing::warn!(user = %user, %error, "gRPC login refused");
        return Err(match error {
            postino_core::CoreError::AccessRefused { reason } => Status::unauthenticated(reason),
            other => status_of(&other),
        });
    }
    open(shared, user, vhost)
}

/// `user`, logged in, on `vhost`.
fn open(shared: &Arc<Shared>, user: String, vhost: &str) -> Result<Caller, Status> {
    let vhost = vhost_of(vhost);
    shared
        .broker
        .access()
        .check_vhost(&user, vhost)
        .map_err(|error| status_of(&error))?;
    let host = shared
        .broker
        .vhost(vhost)
        .ok_or_else(|| Status::not_found(format!("no virtual host '{vhost}'")))?;
    Ok(Caller {
        user,
        host,
        shared: Arc::clone(shared),
    })
}
