//! Request extractors whose failures use the API's error body: a `Json` that answers
//! `invalid_json` / `payload_too_large` instead of axum's plain-text rejections, and a
//! `Payload` that takes either a JSON body or a multipart form on the upload routes.

use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::ratelimit::Client;
use crate::app::AppState;
use crate::embed::Media;
use crate::ingest::Written;

/// A JSON request or response body. As an extractor it accepts any content type except
/// multipart (clients that forget `Content-Type: application/json` still work) and reports
/// malformed bodies as `400 invalid_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// Parses a JSON body, naming the problem (syntax or shape) in the message.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over the limit of {limit} bytes"),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body up to `limit` bytes; a declared length over the limit is refused before
/// anything is read.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(limit)
            } else {
                ApiError::bad_request(
                    "invalid_request",
                    format!("could not read the body: {inner}"),
                )
            }
        })
}

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.settings.server.body_limit;
        if is_multipart(req.headers()) {
            // Read what the client sends (within the limit) so that it sees this answer.
            let _ = read_body(req, limit).await;
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                "this route takes a JSON body, not a multipart form",
            ));
        }
        let bytes = read_body(req, limit).await?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The body of an upload route: JSON (limited to `server.body_limit`) or a multipart form
/// (limited to `server.upload_limit`, set on the route).
pub enum Payload<T> {
    Json(T),
    Multipart(Form),
}

/// A multipart form and the client that sends it (whose quota its spooled files count against).
pub struct Form {
    fields: Multipart,
    /// The client ([`Client`]) as the spool's owner name.
    owner: String,
}

impl Form {
    pub fn new(fields: Multipart, client: &Client) -> Self {
        Form {
            fields,
            owner: client.to_string(),
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for Payload<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if is_multipart(req.headers()) {
            let limit = state.settings.server.upload_limit;
            if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
                return Err(too_large(limit));
            }
            let client = Client::of(&state.keys, &req);
            return Multipart::from_request(req, state)
                .await
                .map(|fields| Payload::Multipart(Form::new(fields, &client)))
                .map_err(multipart_rejection);
        }
        let bytes = read_body(req, state.settings.server.body_limit).await?;
        parse_json(&bytes).map(Payload::Json)
    }
}

fn multipart_rejection(e: MultipartRejection) -> ApiError {
    ApiError::bad_request("invalid_multipart", e.body_text())
}

/// Maps an error met while reading a multipart form.
pub fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the multipart body is over the upload limit",
        )
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

/// Passes on the result of reading a form; on failure first reads and discards the rest of the
/// body (within the route's limit), so that a client still sending gets the error answer
/// rather than a reset connection. A body over the limit is not drained.
pub async fn finish_form<T>(form: &mut Form, result: ApiResult<T>) -> ApiResult<T> {
    if let Err(e) = &result {
        if e.status != StatusCode::PAYLOAD_TOO_LARGE {
            while let Ok(Some(mut field)) = form.fields.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        }
    }
    result
}

/// The value of a multipart form field.
pub enum FieldValue {
    /// A `file` field: spooled to disk while it was received.
    File(Media),
    /// Any other field, held in memory (at most `server.body_limit` bytes).
    Bytes(Vec<u8>),
}

impl FieldValue {
    /// The bytes of a field held in memory (nothing for a spooled file).
    pub fn bytes(&self) -> &[u8] {
        match self {
            FieldValue::Bytes(b) => b,
            FieldValue::File(_) => &[],
        }
    }

    pub fn into_media(self) -> Media {
        match self {
            FieldValue::File(m) => m,
            FieldValue::Bytes(b) => Media::Memory(b),
        }
    }
}

fn field_too_large(name: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("form field `{name}` is over the limit of {limit} bytes"),
    )
}

/// `503 overloaded` for a file the spool's quota has no room for, with `Retry-After`: room
/// comes back as the client's (or everyone's) uploads end.
fn spool_full(owner_quota: bool) -> ApiError {
    let whose = if owner_quota {
        "this client's uploads in progress hold"
    } else {
        "uploads in progress hold"
    };
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("{whose} as much of the upload spool as allowed; retry after Retry-After seconds"),
    );
    e.retry_after = Some(SPOOL_RETRY_AFTER_S);
    e
}

/// `Retry-After` of an upload refused because the spool's quota is used up.
pub const SPOOL_RETRY_AFTER_S: u32 = 5;

/// Reads the next field of a form. A `file` field is written to the upload spool piece by piece
/// as it arrives (counting its bytes against `server.upload_limit` and the client's spool
/// quota, `server.spool_per_client` and `server.spool_total`), so a large or slow upload holds
/// disk, not memory; other fields are kept in memory up to `server.body_limit`.
pub async fn next_field(
    form: &mut Form,
    state: &AppState,
) -> Result<Option<(String, FieldValue)>, ApiError> {
    let Some(mut field): Option<Field<'_>> =
        form.fields.next_field().await.map_err(multipart_error)?
    else {
        return Ok(None);
    };
    let name = field.name().unwrap_or_default().to_string();
    if name == "file" {
        let limit = state.settings.server.upload_limit;
        let io_err = |e: std::io::Error| {
            tracing::error!(error = %e, "could not spool an uploaded file");
            ApiError::internal()
        };
        let mut file = state.engine.spool().create(&form.owner).map_err(io_err)?;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            match file.write(&chunk, limit as u64).await.map_err(io_err)? {
                Written::Done => {}
                Written::OverFileLimit => return Err(field_too_large(&name, limit)),
                Written::OverOwnerQuota => return Err(spool_full(true)),
                Written::OverTotalQuota => return Err(spool_full(false)),
            }
        }
        return Ok(Some((
            name,
            FieldValue::File(file.finish().await.map_err(io_err)?),
        )));
    }
    let limit = state.settings.server.body_limit;
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > limit {
            return Err(field_too_large(&name, limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some((name, FieldValue::Bytes(bytes))))
}

/// A form field that must be UTF-8 text.
pub fn text_field(name: &str, bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::bad_request(
            "invalid_multipart",
            format!("form field `{name}` is not UTF-8 text"),
        )
    })
}

/// A form field parsed from its text (numbers, booleans, modalities).
pub fn parsed_field<T: std::str::FromStr>(name: &str, bytes: &[u8]) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    let text = text_field(name, bytes)?;
    text.trim().parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_multipart",
            format!("form field `{name}`: {e} (got `{text}`)"),
        )
    })
}

/// A form field holding JSON.
pub fn json_field<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("form field `{name}` is not valid JSON: {e}"),
        )
    })
}

/// Keeps the value of a form field that may appear only once; a repeated one is refused (a
/// JSON body refuses a duplicate key the same way) rather than the last one silently winning.
pub fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::bad_request(
            "invalid_multipart",
            format!("duplicate field `{name}`: the form may hold it only once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The answer to a field the route does not know.
pub fn unknown_field(name: &str, known: &[&str]) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!(
            "unknown form field `{name}` (expected: {})",
            known.join(", ")
        ),
    )
}
