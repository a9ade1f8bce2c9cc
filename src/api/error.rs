//! The one place that turns errors into HTTP answers. Every error leaves the server as
//! `{"error":{"code":"...","message":"..."}}` with a stable `code`; internal details (storage,
//! index, model failures) are logged here and never sent to the client.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::EngineError;

/// The error body of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `collection_not_found`, `invalid_json`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// An error answer: status, stable code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Seconds the client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The answer for a status produced outside the handlers (unknown route, wrong method,
    /// timeout, body limit), so those carry the same body as every other error.
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this route does not accept this method",
            ),
            StatusCode::REQUEST_TIMEOUT => (
                "request_timeout",
                "the request took longer than the server's request timeout",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "the request body is over the limit")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_content_type",
                "the request's content type is not accepted here",
            ),
            StatusCode::BAD_REQUEST => ("invalid_request", "the request is malformed"),
            StatusCode::RANGE_NOT_SATISFIABLE => (
                "range_not_satisfiable",
                "the requested range lies outside the content",
            ),
            StatusCode::TOO_MANY_REQUESTS => (
                "rate_limited",
                "too many requests; retry after the number of seconds in Retry-After",
            ),
            StatusCode::SERVICE_UNAVAILABLE => {
                ("unavailable", "the server cannot answer right now")
            }
            s if s.is_server_error() => ("internal_error", "internal server error"),
            _ => ("http_error", status.canonical_reason().unwrap_or("error")),
        };
        Self::new(status, code, message)
    }

    /// 401: no API key, or not a valid one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid key without the access the route needs.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        // The one exhaustive mapping of engine errors to statuses: a new variant does not
        // compile until it is given a status here.
        let status = match &e {
            EngineError::NotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::CollectionExists(_) | EngineError::Conflict(_) => StatusCode::CONFLICT,
            // Including `wrong_dimension`, `non_finite_vector`, `empty_file`, `invalid_media`.
            EngineError::Invalid { .. } => StatusCode::BAD_REQUEST,
            EngineError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EngineError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EngineError::Overloaded(_) | EngineError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Store(_) | EngineError::Index(_) | EngineError::Embed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let overloaded = matches!(e, EngineError::Overloaded(_) | EngineError::Busy(_));
        if status.is_server_error() && !overloaded {
            tracing::error!(code, error = %e, "request failed");
            return ApiError {
                status,
                code: Cow::Borrowed(code),
                message: "internal error; the server log has the details".into(),
                retry_after: None,
            };
        }
        ApiError {
            status,
            code: Cow::Borrowed(code),
            message: e.to_string(),
            retry_after: overloaded.then_some(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::EmbedError;
    use crate::index::IndexError;
    use crate::ingest::QueueFull;

    fn status_and_code(e: EngineError) -> (u16, String, Option<u32>, String) {
        let a = ApiError::from(e);
        (
            a.status.as_u16(),
            a.code.into_owned(),
            a.retry_after,
            a.message,
        )
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let nf = EngineError::NotFound {
            what: "collection",
            name: "x".into(),
        };
        assert_eq!(status_and_code(nf).0, 404);
        assert_eq!(
            status_and_code(EngineError::CollectionExists("x".into())).0,
            409
        );
        assert_eq!(status_and_code(EngineError::Conflict("x".into())).0, 409);
        let (s, c, _, _) = status_and_code(EngineError::invalid("wrong_dimension", "d"));
        assert_eq!((s, c.as_str()), (400, "wrong_dimension"));
        let (s, c, _, _) = status_and_code(EngineError::UnsupportedMedia("m".into()));
        assert_eq!((s, c.as_str()), (415, "unsupported_media_type"));
        let (s, c, r, _) = status_and_code(EngineError::Overloaded(QueueFull));
        assert_eq!((s, c.as_str(), r), (503, "overloaded", Some(1)));
        let busy = EngineError::from(EmbedError::Busy("decode budget in use".into()));
        let (s, c, r, m) = status_and_code(busy);
        assert_eq!((s, c.as_str(), r), (503, "overloaded", Some(1)));
        assert!(m.contains("decode budget"), "{m}");
        // Internal failures keep their code but not their detail.
        let (s, c, r, m) = status_and_code(EngineError::Embed(EmbedError::Device(
            "secret detail".into(),
        )));
        assert_eq!((s, c.as_str(), r), (500, "encoder_error", None));
        assert!(!m.contains("secret"), "{m}");
        let (s, _, _, m) = status_and_code(EngineError::Index(IndexError::Io {
            path: "/secret/x".into(),
            source: std::io::Error::other("disk"),
        }));
        assert_eq!(s, 500);
        assert!(!m.contains("secret"), "{m}");
    }

    #[tokio::test]
    async fn overloaded_response_has_retry_after_and_error_body() {
        let resp = ApiError::from(EngineError::Overloaded(QueueFull)).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
        assert!(v["error"]["message"].is_string());
    }
}
