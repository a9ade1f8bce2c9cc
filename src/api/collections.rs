//! `/v1/collections`: create, list, show and delete collections.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{encode_segment, ApiResult, ErrorBody, Json};
use crate::app::AppState;
use crate::engine::{CollectionInfo, CreateCollection, HnswParams, IndexState};

/// HNSW parameters; each falls back to the server's `[index]` default.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswBody {
    /// Links per node (2..=255).
    #[schema(minimum = 2, maximum = 255)]
    pub m: Option<usize>,
    /// Candidate list width while building; must exceed `2 * m`, at most 4096.
    #[schema(minimum = 5, maximum = 4096)]
    pub ef_construction: Option<usize>,
    /// Default candidate list width while searching (1..=4096).
    #[schema(minimum = 1, maximum = 4096)]
    pub ef_search: Option<usize>,
}

/// `POST /v1/collections`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionBody {
    /// 1-64 characters of `[A-Za-z0-9_-]`.
    #[schema(example = "photos", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// A loaded model (see `/v1/models`); the collection is bound to it for life.
    #[schema(example = "default")]
    pub model: String,
    #[serde(default)]
    pub hnsw: Option<HnswBody>,
    /// Labels every upload is zero-shot classified against; the top 3 are stored in the
    /// item's metadata under `tags`.
    #[serde(default)]
    pub auto_tags: Vec<String>,
}

/// A collection's index.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexDto {
    /// `hnsw` or `flat`.
    pub kind: String,
    /// Vectors in the index.
    pub len: usize,
    /// `ready`, or `rebuild_pending` while deletions wait for a rebuild.
    pub state: String,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

/// A collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionDto {
    pub name: String,
    pub model: String,
    pub dim: usize,
    /// Items per modality (`image`, `text`, ..., `vector` for items uploaded as vectors).
    pub counts: BTreeMap<String, u64>,
    /// All items.
    pub total: u64,
    pub index: IndexDto,
    pub auto_tags: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
}

impl From<IndexState> for IndexDto {
    fn from(i: IndexState) -> Self {
        IndexDto {
            kind: i.kind,
            len: i.len,
            state: i.state,
            m: i.m,
            ef_construction: i.ef_construction,
            ef_search: i.ef_search,
        }
    }
}

impl From<CollectionInfo> for CollectionDto {
    fn from(c: CollectionInfo) -> Self {
        CollectionDto {
            name: c.name,
            model: c.model,
            dim: c.dim,
            counts: c.counts,
            total: c.total,
            index: c.index.into(),
            auto_tags: c.auto_tags,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionDto>,
}

/// Create a collection bound to a model.
#[utoipa::path(post, path = "/v1/collections", tag = "collections",
    request_body = CreateCollectionBody,
    responses(
        (status = 201, description = "Created", body = CollectionDto),
        (status = 400, description = "Invalid name, parameters or JSON", body = ErrorBody),
        (status = 404, description = "Unknown model (`model_not_found`)", body = ErrorBody),
        (status = 409, description = "The name is taken (`collection_exists`)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Json(body): Json<CreateCollectionBody>,
) -> ApiResult<Response> {
    let req = CreateCollection {
        name: body.name,
        model: body.model,
        hnsw: body.hnsw.map(|h| HnswParams {
            m: h.m,
            ef_construction: h.ef_construction,
            ef_search: h.ef_search,
        }),
        auto_tags: body.auto_tags,
    };
    let engine = state.engine.clone();
    // Creating loads an (empty) index and writes to the store: keep it off the async workers.
    let info = tokio::task::spawn_blocking(move || engine.create_collection(req))
        .await
        .map_err(|_| super::ApiError::internal())??;
    let location = format!("/v1/collections/{}", encode_segment(&info.name));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CollectionDto::from(info)),
    )
        .into_response())
}

/// List the collections, in name order.
#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, body = CollectionList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<CollectionList>> {
    let collections = state.engine.list_collections()?;
    Ok(Json(CollectionList {
        collections: collections.into_iter().map(CollectionDto::from).collect(),
    }))
}

/// Show a collection: its model, item counts per modality and index state.
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses(
        (status = 200, body = CollectionDto),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<CollectionDto>> {
    Ok(Json(state.engine.get_collection(&name)?.into()))
}

/// Delete a collection with all its items.
#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.engine.delete_collection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
