//! Basic authentication with the broker's users, and what their tags allow, as in RabbitMQ:
//! `administrator` may do everything; `monitoring` may read everything; `management` (and
//! `policymaker`) may see and change the objects of the virtual hosts it has permissions on,
//! each change checked against its configure / write / read patterns like a client's. A user
//! with none of these tags may not use the API. No or wrong credentials answer 401; a known
//! user doing what its tags or permissions do not allow, 403.

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use postino_core::Action;
use postino_types::{Clock, SystemClock};

use crate::Api;
use crate::error::ApiError;
use crate::tls::Peer;

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
    api: Arc<Api>,
}

/// The tags that open the management API.
const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "management", "policymaker"];

fn credentials(parts: &Parts) -> Option<(String, String)> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let connected = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer.clone());
        let peer = connected.as_ref().map(|connected| connected.address.ip());
        let certificate_user = connected.and_then(|connected| connected.certificate_user);
        let Some((name, password)) = credentials(parts) else {
            let Some(name) = certificate_user else {
                return Err(ApiError::unauthorized(
                    "this API needs HTTP basic authentication with a broker user",
                ));
            };
            api.broker
                .access()
                .authenticate_certificate(&name, peer)
                .map_err(|error| ApiError::unauthorized(error.to_string()))?;
            return Self::tagged(api, name);
        };
        let checked = api
            .broker
            .login(&name, &password, peer, SystemClock.now_ms())
            .await;
        match checked {
            Ok(()) => {}
            Err(error @ postino_core::CoreError::TooManyLogins { .. }) => {
                tracing::warn!(user = %name, %error, "management login refused");
                return Err(error.into());
            }
            Err(error) => {
                tracing::warn!(user = %name, %error, "management login refused");
                return Err(ApiError::unauthorized(error.to_string()));
            }
        }
        Self::tagged(api, name)
    }
}

impl Caller {
    /// The caller `name` once authenticated: refused without a management tag.
    fn tagged(api: &Arc<Api>, name: String) -> Result<Self, ApiError> {
        let tags = api.broker.access().tags(&name).unwrap_or_default();
        if !tags
            .iter()
            .any(|tag| MANAGEMENT_TAGS.contains(&tag.as_str()))
        {
            return Err(ApiError::forbidden(format!(
                "user '{name}' has none of the tags administrator, monitoring, management"
            )));
        }
        Ok(Self {
            name,
            tags,
            api: Arc::clone(api),
        })
    }

    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|held| held == tag)
    }

    /// An administrator.
    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Whether the caller sees every client connection (administrators and monitoring
    /// users; others see their own).
    pub fn sees_every_connection(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    /// Refuses anyone but an administrator.
    ///
    /// # Errors
    /// 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user '{}' is not an administrator",
                self.name
            )))
        }
    }

    /// Whether the caller may see the objects of `vhost`.
    pub fn sees(&self, vhost: &str) -> bool {
        self.is_admin()
            || self.has("monitoring")
            || self
                .api
                .broker
                .access()
                .check_vhost(&self.name, vhost)
                .is_ok()
    }

    /// The virtual hosts the caller may see, by name.
    pub fn visible_vhosts(&self) -> Vec<String> {
        self.api
            .broker
            .vhost_names()
            .into_iter()
            .filter(|vhost| self.sees(vhost))
            .collect()
    }

    /// Refuses a caller who may not see `vhost`.
    ///
    /// # Errors
    /// 403.
    pub fn require_sees(&self, vhost: &str) -> Result<(), ApiError> {
        if self.sees(vhost) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user '{}' has no access to vhost '{vhost}'",
                self.name
            )))
        }
    }

    /// Checks that the caller may `action` the resource `name` (of `kind`) in `vhost`:
    /// administrators may; others as their permissions say.
    ///
    /// # Errors
    /// 403 naming the permission.
    pub fn authorize(
        &self,
        vhost: &str,
        action: Action,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if self.is_admin() {
            return Ok(());
        }
        self.api
            .broker
            .access()
            .authorize(&self.name, vhost, action, kind, name)
            .map_err(|error| ApiError::forbidden(error.to_string()))
    }
}
