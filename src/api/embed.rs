//! `POST /v1/embed` and `POST /v1/classify`: a model's embedding of one input, and zero-shot
//! classification against labels. Neither touches a collection.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{
    finish_form, json_field, next_field, parsed_field, set_once, text_field, unknown_field, Form,
    Payload,
};
use super::{ApiError, ApiResult, ErrorBody, Json};
use crate::app::AppState;
use crate::embed::{Media, Modality};
use crate::engine::QueryTerm;

/// `POST /v1/embed` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    /// A loaded model.
    #[schema(example = "default")]
    pub model: String,
    #[schema(example = "a dog on a beach")]
    pub text: String,
}

/// `POST /v1/embed` as `multipart/form-data`.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct EmbedForm {
    pub model: String,
    /// The input file (or give `text`).
    #[schema(content_media_type = "application/octet-stream")]
    pub file: Option<Vec<u8>>,
    pub text: Option<String>,
    /// Modality of the file instead of the detected one.
    #[schema(pattern = "^(text|image|audio|video|depth|thermal|imu)$")]
    pub modality: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbedResponse {
    pub model: String,
    pub modality: String,
    pub dim: usize,
    /// L2-normalised: dot products of two vectors are cosines.
    pub vector: Vec<f32>,
}

/// `POST /v1/classify` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    pub model: String,
    pub text: String,
    /// 1 to 256 labels.
    #[schema(example = json!(["cat", "dog"]))]
    pub labels: Vec<String>,
    /// Prompt each label is put in; `{}` stands for the label (default `a photo of a {}.`).
    pub template: Option<String>,
}

/// `POST /v1/classify` as `multipart/form-data`.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ClassifyForm {
    pub model: String,
    #[schema(content_media_type = "application/octet-stream")]
    pub file: Option<Vec<u8>>,
    pub text: Option<String>,
    /// Modality of the file instead of the detected one.
    #[schema(pattern = "^(text|image|audio|video|depth|thermal|imu)$")]
    pub modality: Option<String>,
    /// A JSON array of labels, or one label per `labels` field (repeatable).
    pub labels: Vec<String>,
    pub template: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelDto {
    pub label: String,
    pub probability: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassifyResponse {
    /// Most probable first; probabilities sum to 1.
    pub labels: Vec<LabelDto>,
}

/// The fields both forms share.
#[derive(Default)]
struct Fields {
    model: Option<String>,
    file: Option<Media>,
    text: Option<String>,
    modality: Option<Modality>,
    labels: Vec<String>,
    template: Option<String>,
}

impl Fields {
    async fn read(state: &AppState, mut form: Form, known: &[&str]) -> ApiResult<Fields> {
        let result = Self::read_fields(state, &mut form, known).await;
        finish_form(&mut form, result).await
    }

    async fn read_fields(state: &AppState, form: &mut Form, known: &[&str]) -> ApiResult<Fields> {
        let mut f = Fields::default();
        while let Some((name, value)) = next_field(form, state).await? {
            let bytes = value.bytes();
            if !known.contains(&name.as_str()) {
                return Err(unknown_field(&name, known));
            }
            match name.as_str() {
                "model" => set_once(&mut f.model, "model", text_field("model", bytes)?)?,
                "file" | "text" if f.file.is_some() || f.text.is_some() => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        "give one `file` or one `text` field",
                    ))
                }
                "file" => f.file = Some(value.into_media()),
                "text" => f.text = Some(text_field("text", bytes)?),
                "modality" => set_once(
                    &mut f.modality,
                    "modality",
                    parsed_field("modality", bytes)?,
                )?,
                "template" => {
                    set_once(&mut f.template, "template", text_field("template", bytes)?)?
                }
                "labels" => {
                    let s = text_field("labels", bytes)?;
                    if s.trim_start().starts_with('[') {
                        f.labels.extend(json_field::<Vec<String>>("labels", bytes)?);
                    } else {
                        f.labels.push(s);
                    }
                }
                _ => unreachable!("checked against `known`"),
            }
        }
        Ok(f)
    }

    fn model(&mut self) -> ApiResult<String> {
        self.model.take().ok_or_else(|| {
            ApiError::bad_request("invalid_request", "the form has no `model` field")
        })
    }

    fn term(&mut self) -> ApiResult<QueryTerm> {
        match (self.file.take(), self.text.take()) {
            (Some(bytes), None) => Ok(QueryTerm::File {
                bytes,
                modality: self.modality,
            }),
            (None, Some(t)) if self.modality.is_none() => Ok(QueryTerm::Text(t)),
            (None, Some(_)) => Err(ApiError::bad_request(
                "invalid_request",
                "`modality` applies to a `file` field",
            )),
            _ => Err(ApiError::bad_request(
                "invalid_request",
                "the form has no `file` (or `text`) field",
            )),
        }
    }
}

/// Embed one input with a model.
///
/// JSON `{"model": ..., "text": ...}`, or multipart with fields `model`, `file` (or `text`)
/// and optionally `modality`.
#[utoipa::path(post, path = "/v1/embed", tag = "embed",
    request_body(content(
        (EmbedBody = "application/json"),
        (EmbedForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = EmbedResponse),
        (status = 400, description = "`invalid_json`, `empty_file`, `invalid_media`, `unsupported_modality`, ...", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    ))]
pub async fn embed(
    State(state): State<AppState>,
    payload: Payload<EmbedBody>,
) -> ApiResult<Json<EmbedResponse>> {
    let (model, term) = match payload {
        Payload::Json(b) => (b.model, QueryTerm::Text(b.text)),
        Payload::Multipart(form) => {
            let mut f = Fields::read(&state, form, &["model", "file", "text", "modality"]).await?;
            (f.model()?, f.term()?)
        }
    };
    let (info, modality, vector) = state.engine.embed(&model, term).await?;
    Ok(Json(EmbedResponse {
        model: info.name,
        modality: modality.as_str().to_string(),
        dim: vector.len(),
        vector,
    }))
}

/// Zero-shot classification of one input against labels.
///
/// JSON `{"model", "text", "labels": [...], "template"?}`, or multipart with fields `model`,
/// `file` (or `text`), `modality`?, `labels` (a JSON array, or repeated), `template`?.
#[utoipa::path(post, path = "/v1/classify", tag = "embed",
    request_body(content(
        (ClassifyBody = "application/json"),
        (ClassifyForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = ClassifyResponse),
        (status = 400, description = "No labels, bad template, bad input", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    ))]
pub async fn classify(
    State(state): State<AppState>,
    payload: Payload<ClassifyBody>,
) -> ApiResult<Json<ClassifyResponse>> {
    let (model, term, labels, template) = match payload {
        Payload::Json(b) => (b.model, QueryTerm::Text(b.text), b.labels, b.template),
        Payload::Multipart(form) => {
            let mut f = Fields::read(
                &state,
                form,
                &["model", "file", "text", "modality", "labels", "template"],
            )
            .await?;
            let (model, term) = (f.model()?, f.term()?);
            (model, term, f.labels, f.template)
        }
    };
    let scores = state
        .engine
        .classify(&model, term, labels, template)
        .await?;
    Ok(Json(ClassifyResponse {
        labels: scores
            .into_iter()
            .map(|s| LabelDto {
                label: s.label,
                probability: s.probability,
            })
            .collect(),
    }))
}
