//! `/v1/collections/{name}/items`: uploads (JSON or multipart), listing, one item, its
//! original content, deletion.
//!
//! Multipart uploads read the form's fields in order:
//! - `file` starts a new file item (its modality is detected from the bytes; the file name is
//!   ignored), `text` starts a new text item;
//! - `metadata` (a JSON object), `id` and `modality` that come **after** an item apply to that
//!   item only, each at most once per item;
//! - `metadata` and `modality` that come **before the first item** are defaults for every
//!   item: default metadata is merged under each item's own metadata (the item's keys win),
//!   and the default modality applies to files that do not name their own. An `id` before
//!   the first item is refused, since ids are unique.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa::ToSchema;

use super::extract::{
    finish_form, json_field, next_field, parsed_field, text_field, unknown_field, Form, Payload,
};
use super::{content_url, ApiError, ApiResult, ErrorBody, Json};
use crate::app::AppState;
use crate::embed::Modality;
use crate::engine::metadata::{check_item, RequestBudget};
use crate::engine::{Content, ItemContent, ItemStatus, ItemView, NewInput, MAX_UPLOAD_ITEMS};

/// Default page size of item listings.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of item listings.
pub const MAX_LIMIT: usize = 1000;

/// One item of a JSON upload: exactly one of `text` and `vector`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItemBody {
    /// Id of the item; generated when absent. An id that exists is a `409 conflict`.
    pub id: Option<String>,
    /// A text to embed.
    pub text: Option<String>,
    /// A precomputed vector of the collection's dimension (stored with modality `vector`).
    pub vector: Option<Vec<f32>>,
    /// A JSON object stored with the item and usable in search filters.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /v1/collections/{name}/items` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemsBody {
    pub items: Vec<NewItemBody>,
}

/// `POST /v1/collections/{name}/items` as `multipart/form-data` (field order matters: see the
/// route's description).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AddItemsForm {
    /// A file to add (repeatable); JPEG, PNG, WebP, GIF or UTF-8 text, detected from the bytes.
    #[schema(content_media_type = "application/octet-stream")]
    pub file: Vec<Vec<u8>>,
    /// A text to add (repeatable).
    pub text: Option<Vec<String>>,
    /// JSON object: before the first item, defaults for all items; after an item, that item's.
    #[schema(value_type = Option<Object>, content_media_type = "application/json")]
    pub metadata: Option<String>,
    /// Id of the item it follows.
    pub id: Option<String>,
    /// Modality of the file it follows (or, before the first item, of all files), instead of
    /// the detected one.
    #[schema(pattern = "^(text|image|audio|video|depth|thermal|imu)$")]
    pub modality: Option<String>,
}

/// What happened to one uploaded item.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemStatusDto {
    /// The item's id (for a duplicate: the id of the item that already holds this content).
    pub id: String,
    /// `image`, `text`, ..., or `vector`.
    pub modality: String,
    /// `created`, `replaced` or `duplicate`.
    pub status: String,
}

impl From<ItemStatus> for ItemStatusDto {
    fn from(s: ItemStatus) -> Self {
        ItemStatusDto {
            id: s.id,
            modality: s.modality,
            status: s.status,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddItemsResponse {
    /// One entry per input, in input order.
    pub items: Vec<ItemStatusDto>,
}

/// An item.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemDto {
    pub id: String,
    pub modality: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The text of a text item: its first 4096 bytes when `text_truncated` is true (the whole
    /// text is served at `content_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Present and true when `text` is only the beginning of the text.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
    /// Type of the stored original file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub content_len: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
    /// Where the original content is served; absent for items uploaded as vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_url: Option<String>,
    pub model: String,
    pub weights_sha256: String,
    pub preprocess_version: String,
    /// Unix milliseconds.
    pub created_at: u64,
}

impl ItemDto {
    pub fn new(collection: &str, v: ItemView) -> Self {
        let has_content = v.content_type.is_some() || v.text.is_some();
        ItemDto {
            content_url: has_content.then(|| content_url(collection, &v.id)),
            id: v.id,
            modality: v.modality,
            metadata: v.metadata,
            text: v.text,
            text_truncated: v.text_truncated,
            content_type: v.content_type,
            content_len: v.content_len,
            content_sha256: v.content_sha256,
            model: v.model,
            weights_sha256: v.weights_sha256,
            preprocess_version: v.preprocess_version,
            created_at: v.created_at,
        }
    }
}

/// One page of items, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPageDto {
    pub items: Vec<ItemDto>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn item_from_json(i: usize, b: NewItemBody) -> ApiResult<NewInput> {
    let content = match (b.text, b.vector) {
        (Some(t), None) => Content::Text(t),
        (None, Some(v)) => Content::Vector(v),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("item {i}: give exactly one of `text` and `vector`"),
            ))
        }
    };
    Ok(NewInput {
        id: b.id,
        content,
        metadata: b.metadata.unwrap_or(serde_json::Value::Null),
    })
}

struct FormItem {
    input: NewInput,
    has_metadata: bool,
    has_id: bool,
    has_modality: bool,
}

fn object_field(name: &str, bytes: &[u8]) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    match json_field::<serde_json::Value>(name, bytes)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            "invalid_metadata",
            "form field `metadata` must be a JSON object",
        )),
    }
}

/// Reads a multipart upload following the field-order rule of this module.
async fn items_from_form(state: &AppState, mut form: Form) -> ApiResult<Vec<NewInput>> {
    let result = read_items(state, &mut form).await;
    finish_form(&mut form, result).await
}

async fn read_items(state: &AppState, form: &mut Form) -> ApiResult<Vec<NewInput>> {
    const KNOWN: &[&str] = &["file", "text", "metadata", "id", "modality"];
    // Metadata limits are checked as fields arrive, before the default metadata is copied
    // into any item: the defaults count once per item against the request's total, so a small
    // form cannot make the server hold its default metadata a thousand times over.
    let limits = *state.engine.metadata_limits();
    let mut budget = RequestBudget::new(&limits);
    let mut default_len = 0usize;
    let mut default_meta = serde_json::Map::new();
    let mut default_modality: Option<Modality> = None;
    let mut items: Vec<FormItem> = Vec::new();
    let dup = |what: &str, n: usize| {
        ApiError::bad_request(
            "invalid_multipart",
            format!("item {n} has more than one `{what}` field"),
        )
    };
    while let Some((name, value)) = next_field(form, state).await? {
        let bytes = value.bytes();
        let n = items.len();
        match name.as_str() {
            "file" | "text" => {
                // Refused here, before more files are spooled, rather than after the whole form.
                if n == MAX_UPLOAD_ITEMS {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        format!("at most {MAX_UPLOAD_ITEMS} items per request"),
                    ));
                }
                budget.charge(default_len)?;
                let content = if name == "file" {
                    Content::File {
                        bytes: value.into_media(),
                        modality: None,
                    }
                } else {
                    Content::Text(text_field("text", bytes)?)
                };
                items.push(FormItem {
                    input: NewInput {
                        id: None,
                        content,
                        metadata: serde_json::Value::Null,
                    },
                    has_metadata: false,
                    has_id: false,
                    has_modality: false,
                });
            }
            "metadata" => {
                let m = object_field("metadata", bytes)?;
                match items.last_mut() {
                    None => {
                        default_meta.extend(m);
                        let merged = serde_json::Value::Object(std::mem::take(&mut default_meta));
                        default_len = check_item(&merged, &limits, "default metadata")?;
                        if let serde_json::Value::Object(m) = merged {
                            default_meta = m;
                        }
                    }
                    Some(it) if it.has_metadata => return Err(dup("metadata", n - 1)),
                    Some(it) => {
                        let own = serde_json::Value::Object(m);
                        let len = check_item(&own, &limits, "metadata").map_err(|e| {
                            let mut e = ApiError::from(e);
                            e.message = format!("item {}: {}", n - 1, e.message);
                            e
                        })?;
                        budget.charge(len)?;
                        it.has_metadata = true;
                        it.input.metadata = own;
                    }
                }
            }
            "id" => {
                let id = text_field("id", bytes)?;
                match items.last_mut() {
                    None => {
                        return Err(ApiError::bad_request(
                            "invalid_multipart",
                            "an `id` field must follow the `file` or `text` field it names",
                        ))
                    }
                    Some(it) if it.has_id => return Err(dup("id", n - 1)),
                    Some(it) => {
                        it.has_id = true;
                        it.input.id = Some(id);
                    }
                }
            }
            "modality" => {
                let m: Modality = parsed_field("modality", bytes)?;
                match items.last_mut() {
                    None => default_modality = Some(m),
                    Some(it) if it.has_modality => return Err(dup("modality", n - 1)),
                    Some(it) => match &mut it.input.content {
                        Content::File { modality, .. } => {
                            it.has_modality = true;
                            *modality = Some(m);
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                "invalid_multipart",
                                format!("item {}: `modality` applies to files only", n - 1),
                            ))
                        }
                    },
                }
            }
            other => return Err(unknown_field(other, KNOWN)),
        }
    }
    Ok(items
        .into_iter()
        .map(|mut it| {
            if let Content::File { modality, .. } = &mut it.input.content {
                if modality.is_none() {
                    *modality = default_modality;
                }
            }
            if !default_meta.is_empty() {
                let mut merged = default_meta.clone();
                if let serde_json::Value::Object(own) = it.input.metadata {
                    merged.extend(own);
                }
                it.input.metadata = serde_json::Value::Object(merged);
            }
            it.input
        })
        .collect())
}

/// Add items: all or nothing (an invalid item fails the request, naming its position).
///
/// JSON: `{"items":[{"text":...}|{"vector":[...]}, "metadata":{...}?, "id":...?]}`.
/// Multipart: fields `file` and `text` start items; `metadata` (JSON object), `id` and
/// `modality` after an item apply to that item; `metadata` and `modality` before the first
/// item are defaults for all items (the item's own metadata keys win). Content already stored
/// in the collection is not stored again: its entry has status `duplicate` and the existing id.
#[utoipa::path(post, path = "/v1/collections/{name}/items", tag = "items",
    params(("name" = String, Path, description = "Collection name")),
    request_body(content(
        (AddItemsBody = "application/json"),
        (AddItemsForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "Per-item outcome, in input order", body = AddItemsResponse),
        (status = 400, description = "`invalid_json`, `empty_file`, `invalid_media`, `wrong_dimension`, `non_finite_vector`, ...", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 409, description = "An explicit id exists (`conflict`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "Unrecognised file format (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "Encoder queue full (`overloaded`); retry after `Retry-After` seconds", body = ErrorBody),
    ))]
pub async fn add(
    State(state): State<AppState>,
    Path(name): Path<String>,
    payload: Payload<AddItemsBody>,
) -> ApiResult<Json<AddItemsResponse>> {
    let inputs = match payload {
        Payload::Json(body) => body
            .items
            .into_iter()
            .enumerate()
            .map(|(i, b)| item_from_json(i, b))
            .collect::<ApiResult<Vec<_>>>()?,
        Payload::Multipart(form) => items_from_form(&state, form).await?,
    };
    let statuses = state.engine.add_items(&name, inputs).await?;
    Ok(Json(AddItemsResponse {
        items: statuses.into_iter().map(ItemStatusDto::from).collect(),
    }))
}

/// List items in id order, a page at a time.
#[utoipa::path(get, path = "/v1/collections/{name}/items", tag = "items",
    params(("name" = String, Path, description = "Collection name"), ListParams),
    responses(
        (status = 200, body = ItemPageDto),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<ItemPageDto>> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("limit must be in 1..={MAX_LIMIT}"),
        ));
    }
    let page = state
        .engine
        .list_items(&name, limit, params.cursor.as_deref())?;
    Ok(Json(ItemPageDto {
        items: page
            .items
            .into_iter()
            .map(|v| ItemDto::new(&name, v))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show one item.
#[utoipa::path(get, path = "/v1/collections/{name}/items/{id}", tag = "items",
    params(("name" = String, Path, description = "Collection name"),
           ("id" = String, Path, description = "Item id, percent-encoded")),
    responses(
        (status = 200, body = ItemDto),
        (status = 404, description = "`collection_not_found` or `item_not_found`", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<ItemDto>> {
    let view = state.engine.get_item(&name, &id)?;
    Ok(Json(ItemDto::new(&name, view)))
}

/// Whether a stored type may be shown inline by a browser; everything else is served as an
/// attachment so that a stored file can never run as a page of this origin.
fn inline_type(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        base.as_str(),
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    ) || base.starts_with("audio/")
}

/// The request headers passed on to [`ServeFile`]: ranges and date preconditions.
const FORWARDED: [header::HeaderName; 4] = [
    header::RANGE,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak tags compare weakly.
fn etag_matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    if_none_match.to_str().is_ok_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

/// Serves a content file from disk: streamed (never read whole), with `Range` requests
/// (`206`, `416`), `Last-Modified` and date preconditions from [`ServeFile`]. The strong `ETag`
/// is the content's SHA-256, so `If-None-Match` answers `304` and an `If-Range` naming
/// another tag gets the whole file.
async fn serve_file(path: std::path::PathBuf, etag: &str, headers: &HeaderMap) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| etag_matches(v, etag))
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut req = axum::http::Request::new(Body::empty());
    for name in FORWARDED {
        if let Some(v) = headers.get(&name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    // ServeFile does not know the tag: a range is only for the content the client has.
    if req
        .headers_mut()
        .remove(header::IF_RANGE)
        .is_some_and(|v| v.as_bytes() != etag.as_bytes())
    {
        req.headers_mut().remove(header::RANGE);
    }
    let resp = match ServeFile::new(path).oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    };
    match resp.status() {
        // Deleted after it was looked up.
        StatusCode::NOT_FOUND => ApiError::new(
            StatusCode::NOT_FOUND,
            "content_not_found",
            "the item's content is gone",
        )
        .into_response(),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let range = resp.headers().get(header::CONTENT_RANGE).cloned();
            let mut out = ApiError::from_status(StatusCode::RANGE_NOT_SATISFIABLE).into_response();
            if let Some(v) = range {
                out.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            out
        }
        _ => resp,
    }
}

/// The original bytes of an item (a text item's text), with the type detected at upload,
/// streamed from disk.
#[utoipa::path(get, path = "/v1/collections/{name}/items/{id}/content", tag = "items",
    params(("name" = String, Path, description = "Collection name"),
           ("id" = String, Path, description = "Item id, percent-encoded")),
    responses(
        (status = 200, description = "The original bytes, with the stored `Content-Type`, `X-Content-Type-Options: nosniff`, `Content-Disposition: attachment` unless the type is a JPEG, PNG, GIF or WebP image or audio, `ETag` (the content's SHA-256), `Last-Modified` and `Accept-Ranges: bytes`",
         content_type = "application/octet-stream"),
        (status = 206, description = "The part of the original named by `Range` (one range), with `Content-Range`",
         content_type = "application/octet-stream"),
        (status = 304, description = "`If-None-Match` names the content's `ETag`, or it was not modified since `If-Modified-Since`"),
        (status = 404, description = "`collection_not_found`, `item_not_found`, or `content_not_found` (items uploaded as vectors)", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable`: the range lies outside the content; `Content-Range` gives its length", body = ErrorBody),
    ))]
pub async fn content(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let engine = state.engine.clone();
    let source = tokio::task::spawn_blocking(move || engine.item_content_source(&name, &id))
        .await
        .map_err(|_| ApiError::internal())??;
    let (mut resp, content_type, etag) = match source {
        ItemContent::File {
            path,
            content_type,
            sha256,
        } => {
            let etag = format!("\"{sha256}\"");
            (
                serve_file(path, &etag, &headers).await,
                content_type,
                Some(etag),
            )
        }
        ItemContent::Text(text) => (
            (StatusCode::OK, text).into_response(),
            "text/plain; charset=utf-8".to_string(),
            None,
        ),
    };
    if resp.status().is_client_error() {
        return Ok(resp);
    }
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert(header::ETAG, tag);
    }
    if resp.status() == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let ct = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if !inline_type(&content_type) {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    Ok(resp)
}

/// Delete an item.
#[utoipa::path(delete, path = "/v1/collections/{name}/items/{id}", tag = "items",
    params(("name" = String, Path, description = "Collection name"),
           ("id" = String, Path, description = "Item id, percent-encoded")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`collection_not_found` or `item_not_found`", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.engine.delete_item(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists() {
        let tag = "\"ab12\"";
        for (v, hit) in [
            ("\"ab12\"", true),
            ("W/\"ab12\"", true),
            ("\"x\", \"ab12\"", true),
            ("*", true),
            ("\"ab1\"", false),
            ("ab12", false),
        ] {
            assert_eq!(etag_matches(&HeaderValue::from_static(v), tag), hit, "{v}");
        }
    }

    #[test]
    fn inline_types() {
        assert!(inline_type("image/png"));
        assert!(inline_type("audio/wav"));
        assert!(inline_type("IMAGE/JPEG; x=y"));
        assert!(!inline_type("text/plain; charset=utf-8"));
        assert!(!inline_type("image/tiff"));
        assert!(!inline_type("application/x-npy"));
    }
}
