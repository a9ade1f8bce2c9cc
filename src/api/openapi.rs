//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations and
//! the DTOs of this module tree, with the API-key scheme on every operation that needs a key.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::OpenApi;

use super::auth::{required, Access};
use super::{collections, embed, health, items, models, search};

/// Name of the bearer scheme in the document.
pub const SECURITY_SCHEME: &str = "api_key";

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
    axum::Json(document()).into_response()
}

/// The whole document: the generated one, its version, and the API keys.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    secure(&mut doc);
    constrain_path_params(&mut doc);
    doc
}

/// The rules the handlers enforce on path parameters (`400 invalid_request` otherwise), so
/// that clients and generated tests know them: collection names are 1-64 characters of
/// `[A-Za-z0-9_-]`, item ids 1-128 characters without control characters or `/`.
fn constrain_path_params(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            let mut constrained = false;
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                if p.parameter_in != ParameterIn::Path {
                    continue;
                }
                let (pattern, max) = match p.name.as_str() {
                    "name" => ("^[A-Za-z0-9_-]+$", 64),
                    "id" => ("^[^\\u0000-\\u001F\\u007F-\\u009F/]+$", 128),
                    _ => continue,
                };
                let schema = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(max))
                    .pattern(Some(pattern));
                p.schema = Some(RefOr::T(Schema::Object(schema.build())));
                constrained = true;
            }
            if constrained {
                op.responses
                    .responses
                    .entry("400".into())
                    .or_insert_with(|| error_response("`invalid_request`: a malformed name or id"));
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}

/// Declares the bearer scheme and, on each operation that needs a key ([`required`]), the
/// requirement and its `401` (and, for writes, `403`) answers. Keys are optional in the
/// server's configuration; the answers only occur when they are configured.
fn secure(doc: &mut utoipa::openapi::OpenApi) {
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let need = required(&method, path);
            if need == Access::Public {
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new(
                SECURITY_SCHEME,
                Vec::<String>::new(),
            )]);
            let answers = &mut op.responses.responses;
            answers.entry("401".into()).or_insert_with(|| {
                error_response("`unauthorized`: no API key, or not a valid one")
            });
            if need == Access::Admin {
                answers.entry("403".into()).or_insert_with(|| {
                    error_response("`forbidden`: the read-only key on a route that changes data")
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_needing_a_key_say_so() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(
            doc["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"],
            "bearer"
        );
        let op = |path: &str, method: &str| doc["paths"][path][method].clone();
        let create = op("/v1/collections", "post");
        assert_eq!(
            create["security"][0][SECURITY_SCHEME],
            serde_json::json!([])
        );
        assert!(create["responses"]["401"].is_object() && create["responses"]["403"].is_object());
        let search = op("/v1/collections/{name}/search", "post");
        assert!(search["responses"]["401"].is_object() && search["responses"]["403"].is_null());
        for (path, method) in [("/healthz", "get"), ("/openapi.json", "get")] {
            assert!(op(path, method)["security"].is_null(), "{path}");
        }
    }
}
