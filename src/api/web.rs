//! `GET /` and `GET /assets/{file}`: the browser demo (files of [`crate::web`]).
//!
//! Assets are revalidated on every use (`Cache-Control: no-cache` with a strong `ETag`, so an
//! unchanged file costs a `304`): their names carry no version, and a new binary must never
//! be paired with an old script. The page gets a `Content-Security-Policy` that allows only
//! this origin's scripts and styles, and `blob:`/`data:` media drawn by the page itself.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::web::{self, Asset};

/// The page's policy: nothing from other origins, no inline scripts, no framing.
pub const PAGE_CSP: &str = "default-src 'self'; img-src 'self' blob: data:; \
    media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.bytes).into_response()
    };
    let h = resp.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    h.insert(header::ETAG, HeaderValue::from_static(etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if asset.path == web::INDEX {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

/// The demo page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(
        web::get(web::INDEX).expect("index.html is embedded"),
        &headers,
    )
}

/// One file of the demo (its scripts, styles and icon).
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    web::get(&file)
        .map(|a| serve(a, &headers))
        .ok_or_else(|| ApiError::from_status(StatusCode::NOT_FOUND))
}
