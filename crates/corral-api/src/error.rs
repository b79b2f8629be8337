//! The one error shape of the API: `{"error": {"code", "message"}}` with the
//! code's HTTP status, for every failure — the library's errors, malformed
//! requests, unknown routes, and even the protocol errors hyper answers itself
//! (see `serve.rs`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_core::{ErrorBody, ErrorCode};

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A 400 `invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<corral_core::Error> for ApiError {
    fn from(e: corral_core::Error) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(code, e.to_string())
    }
}

impl From<corral_core::InvalidId> for ApiError {
    fn from(e: corral_core::InvalidId) -> Self {
        Self::invalid(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

/// The JSON body of an error answer, as bytes (for answers written below axum).
pub(crate) fn body_bytes(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default()
}
