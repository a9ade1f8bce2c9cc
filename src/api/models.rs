//! `GET /v1/models`: the loaded models.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::Json;
use crate::app::AppState;
use crate::embed::ModelInfo;

/// A loaded model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDto {
    /// Name collections and `/v1/embed` refer to it by.
    pub name: String,
    /// Model family, e.g. `clip`.
    pub family: String,
    /// Modalities it embeds, e.g. `["text", "image"]`.
    pub modalities: Vec<String>,
    /// Dimension of its vectors.
    pub dim: usize,
    /// Compute device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    pub precision: String,
    /// Licence of the weights as the model directory states it.
    pub license: String,
    /// SHA-256 of the weight files.
    pub weights_sha256: String,
    /// Version of the preprocessing pipeline.
    pub preprocess_version: u32,
}

impl From<ModelInfo> for ModelDto {
    fn from(m: ModelInfo) -> Self {
        ModelDto {
            name: m.name,
            family: m.family,
            modalities: m
                .modalities
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
            dim: m.dim,
            device: m.device,
            precision: m.precision,
            license: m.license,
            weights_sha256: m.weights_sha256,
            preprocess_version: m.preprocess_version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelDto>,
}

/// List the loaded models.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "The loaded models", body = ModelList)))]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        models: state
            .engine
            .models()
            .into_iter()
            .map(ModelDto::from)
            .collect(),
    })
}
