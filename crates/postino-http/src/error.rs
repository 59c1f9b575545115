//! The API's errors: a status and a JSON body `{"error": …, "reason": …}`, as RabbitMQ's
//! management API writes them; the one core-error → status mapping.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postino_core::CoreError;
use serde_json::json;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
    /// Sent as `Retry-After` (429 answers).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error,
            reason: reason.into(),
            retry_after_s: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 401: no credentials, or wrong ones.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
    }

    /// 403: the caller may not do this.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_refused", reason)
    }

    /// 404 for a named object.
    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} '{name}' not found"),
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        let reason = error.to_string();
        let (status, code) = match &error {
            CoreError::NotFound { .. } | CoreError::UnknownPartition { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            CoreError::PreconditionFailed { .. }
            | CoreError::InvalidArgument { .. }
            | CoreError::UnknownDelivery { .. }
            | CoreError::OffsetOutOfRange { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            CoreError::AccessRefused { .. } => (StatusCode::FORBIDDEN, "access_refused"),
            CoreError::TooManyLogins { retry_after_ms, .. } => {
                let mut refused =
                    Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", reason);
                refused.retry_after_s = Some(retry_after_ms.div_ceil(1000));
                return refused;
            }
            CoreError::ResourceLocked { .. }
            | CoreError::PublishRejected { .. }
            | CoreError::ProducerFenced { .. }
            | CoreError::OutOfOrderSequence { .. }
            | CoreError::Group { .. }
            | CoreError::Transaction { .. } => (StatusCode::CONFLICT, "conflict"),
            CoreError::QueueStopped { .. } | CoreError::PartitionStopped { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            CoreError::Storage(_) if error.is_no_space() => {
                (StatusCode::INSUFFICIENT_STORAGE, "no_space")
            }
            CoreError::Definitions { .. }
            | CoreError::CorruptMessage { .. }
            | CoreError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        Self::new(status, code, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "reason": self.reason });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"postino\""),
            );
        }
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body, or 400 naming what is wrong with it.
///
/// # Errors
/// 400 with serde's reason.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| ApiError::bad_request(error.to_string()))
}
