//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations and
//! the DTOs of this module tree.

use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::{collections, embed, health, items, models, search};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "omnibind",
        description = "Multimodal vector search: every item (image, text, ...) is embedded into one \
                       shared space and searched across modalities. Errors are \
                       `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        models::list,
        collections::create,
        collections::list,
        collections::get,
        collections::delete,
        items::add,
        items::list,
        items::get,
        items::content,
        items::delete,
        search::search,
        embed::embed,
        embed::classify,
        health::healthz,
        health::readyz,
        health::metrics,
        spec,
    ),
    tags(
        (name = "models"), (name = "collections"), (name = "items"), (name = "search"),
        (name = "embed", description = "Embeddings and zero-shot classification"),
        (name = "health"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn spec() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    axum::Json(doc).into_response()
}
