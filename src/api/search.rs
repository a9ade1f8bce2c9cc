//! `POST /v1/collections/{name}/search`: nearest neighbours of a query made of weighted terms
//! (texts, vectors, stored items, an uploaded file), with filters.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::{
    finish_form, json_field, next_field, parsed_field, set_once, text_field, unknown_field, Form,
    Payload,
};
use super::{content_url, ApiError, ApiResult, ErrorBody, Json};
use crate::app::AppState;
use crate::embed::{Media, Modality};
use crate::engine::{Filter, QueryTerm, SearchHit, SearchRequest};

/// Results returned when `k` is not given.
pub const DEFAULT_K: usize = 10;

/// One term of a query, with an optional weight (default 1; negative weights push away).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct QueryTermDoc {
    /// A text, embedded with the collection's model.
    pub text: Option<String>,
    /// A vector in the collection's space.
    pub vector: Option<Vec<f32>>,
    /// The id of a stored item, whose vector is used.
    pub item: Option<String>,
    pub weight: Option<f32>,
}

/// A query: a text, a vector, one term object, or a list of weighted terms. The query vector
/// is the L2-normalised weighted sum of the terms' normalised embeddings.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(untagged)]
pub enum QueryDoc {
    Text(String),
    Vector(Vec<f32>),
    Term(QueryTermDoc),
    Terms(Vec<QueryTermDoc>),
}

/// Conditions results must meet, all of them.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct FilterDoc {
    /// Allowed modalities, e.g. `["image"]`.
    pub modality: Option<Vec<String>>,
    /// Conditions on metadata keys: a plain JSON value means equality, `{"in":[...]}`
    /// membership, `{"gt"|"gte"|"lt"|"lte": number}` a numeric range, e.g.
    /// `{"color":"red","year":{"gte":2000},"tag":{"in":["a","b"]}}`.
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

/// `POST /v1/collections/{name}/search` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[schema(value_type = QueryDoc)]
    pub query: Value,
    /// Results to return, 1..=1000 (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    #[schema(value_type = Option<FilterDoc>)]
    pub filter: Option<Value>,
    /// Drop results scoring below this cosine (a finite number).
    pub min_score: Option<f32>,
    /// Results to skip (paging through results), at most 10000.
    #[schema(maximum = 10000)]
    pub offset: Option<usize>,
    /// Scan every vector (exact) instead of walking the HNSW graph.
    #[serde(default)]
    pub exact: bool,
    /// Candidate list width of the graph search (recall against speed), 1..=4096.
    #[schema(minimum = 1, maximum = 4096)]
    pub ef_search: Option<usize>,
}

/// `POST /v1/collections/{name}/search` as `multipart/form-data`: search by an uploaded file.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct SearchForm {
    /// The query file (exactly one), or give `text` instead.
    #[schema(content_media_type = "application/octet-stream")]
    pub file: Option<Vec<u8>>,
    pub text: Option<String>,
    /// Modality of the file instead of the detected one.
    #[schema(pattern = "^(text|image|audio|video|depth|thermal|imu)$")]
    pub modality: Option<String>,
    /// Results to return, 1..=1000 (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    /// A JSON object, as in the JSON search.
    #[schema(value_type = Option<Object>, content_media_type = "application/json")]
    pub filter: Option<String>,
    pub min_score: Option<f32>,
    /// Results to skip, at most 10000.
    #[schema(maximum = 10000)]
    pub offset: Option<usize>,
    pub exact: Option<bool>,
    #[schema(minimum = 1, maximum = 4096)]
    pub ef_search: Option<usize>,
}

/// One result.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitDto {
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    pub modality: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Where the original content is served; null for items uploaded as vectors.
    pub content_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<HitDto>,
}

fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

fn vector_of(v: &[Value]) -> ApiResult<Vec<f32>> {
    v.iter()
        .map(|x| {
            // Values beyond f32's range become infinite and are refused by the engine as
            // `non_finite_vector`, like any other non-finite component.
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| invalid_query("a vector holds numbers only"))
        })
        .collect()
}

fn term_of(v: Value, allow_weight: bool) -> ApiResult<(QueryTerm, f32)> {
    let Value::Object(mut o) = v else {
        return Err(invalid_query(
            "a query term is an object: {\"text\":...}, {\"vector\":[...]} or {\"item\":\"<id>\"}",
        ));
    };
    let weight = match o.remove("weight") {
        None => 1.0,
        Some(w) if allow_weight => w
            .as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| invalid_query("`weight` must be a number"))?,
        Some(_) => return Err(invalid_query("`weight` belongs to terms of a list")),
    };
    if o.len() != 1 {
        return Err(invalid_query(
            "a query term has exactly one of `text`, `vector` and `item` (and an optional `weight`)",
        ));
    }
    let (key, value) = o.into_iter().next().expect("one entry");
    let term = match (key.as_str(), value) {
        ("text", Value::String(s)) => QueryTerm::Text(s),
        ("item", Value::String(s)) => QueryTerm::Item(s),
        ("vector", Value::Array(a)) => QueryTerm::Vector(vector_of(&a)?),
        ("text" | "item", _) => return Err(invalid_query(format!("`{key}` must be a string"))),
        ("vector", _) => return Err(invalid_query("`vector` must be an array of numbers")),
        _ => return Err(invalid_query(format!("unknown query term `{key}`"))),
    };
    Ok((term, weight))
}

/// The terms of a JSON `query`.
pub fn parse_query(q: Value) -> ApiResult<Vec<(QueryTerm, f32)>> {
    match q {
        Value::String(s) => Ok(vec![(QueryTerm::Text(s), 1.0)]),
        Value::Array(a) if a.is_empty() => Err(invalid_query("the query is empty")),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            Ok(vec![(QueryTerm::Vector(vector_of(&a)?), 1.0)])
        }
        Value::Array(a) if a.iter().all(Value::is_object) => {
            a.into_iter().map(|t| term_of(t, true)).collect()
        }
        Value::Array(_) => Err(invalid_query(
            "a list query is either a vector (numbers) or a list of term objects",
        )),
        v @ Value::Object(_) => Ok(vec![term_of(v, true)?]),
        _ => Err(invalid_query(
            "`query` is a string, a vector, a term object or a list of term objects",
        )),
    }
}

fn parse_filter(v: Value) -> ApiResult<Filter> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request("invalid_filter", format!("invalid filter: {e}")))
}

fn request_from_json(b: SearchBody) -> ApiResult<SearchRequest> {
    Ok(SearchRequest {
        terms: parse_query(b.query)?,
        k: b.k.unwrap_or(DEFAULT_K),
        offset: b.offset.unwrap_or(0),
        filter: b.filter.map(parse_filter).transpose()?,
        min_score: b.min_score,
        exact: b.exact,
        ef_search: b.ef_search,
    })
}

async fn request_from_form(state: &AppState, mut form: Form) -> ApiResult<SearchRequest> {
    let result = read_request(state, &mut form).await;
    finish_form(&mut form, result).await
}

async fn read_request(state: &AppState, form: &mut Form) -> ApiResult<SearchRequest> {
    const KNOWN: &[&str] = &[
        "file",
        "text",
        "modality",
        "k",
        "filter",
        "min_score",
        "offset",
        "exact",
        "ef_search",
    ];
    let mut file: Option<Media> = None;
    let mut text: Option<String> = None;
    let mut modality: Option<Modality> = None;
    let (mut k, mut offset, mut exact): (Option<usize>, Option<usize>, Option<bool>) =
        (None, None, None);
    let mut req = SearchRequest {
        terms: Vec::new(),
        k: DEFAULT_K,
        offset: 0,
        filter: None,
        min_score: None,
        exact: false,
        ef_search: None,
    };
    // Every field but the query may appear once, as every key of a JSON body; the engine then
    // checks the values the same way for both (a `min_score` of `nan` is refused there).
    while let Some((name, value)) = next_field(form, state).await? {
        let bytes = value.bytes();
        match name.as_str() {
            "file" | "text" if file.is_some() || text.is_some() => {
                return Err(invalid_query(
                    "give one `file` or one `text` field; for several terms use the JSON query",
                ))
            }
            "file" => file = Some(value.into_media()),
            "text" => text = Some(text_field("text", bytes)?),
            "modality" => set_once(&mut modality, "modality", parsed_field("modality", bytes)?)?,
            "k" => set_once(&mut k, "k", parsed_field("k", bytes)?)?,
            "offset" => set_once(&mut offset, "offset", parsed_field("offset", bytes)?)?,
            "min_score" => set_once(
                &mut req.min_score,
                "min_score",
                parsed_field("min_score", bytes)?,
            )?,
            "exact" => set_once(&mut exact, "exact", parsed_field("exact", bytes)?)?,
            "ef_search" => set_once(
                &mut req.ef_search,
                "ef_search",
                parsed_field("ef_search", bytes)?,
            )?,
            "filter" => set_once(
                &mut req.filter,
                "filter",
                parse_filter(json_field("filter", bytes)?)?,
            )?,
            other => return Err(unknown_field(other, KNOWN)),
        }
    }
    req.k = k.unwrap_or(DEFAULT_K);
    req.offset = offset.unwrap_or(0);
    req.exact = exact.unwrap_or(false);
    let term = match (file, text) {
        (Some(bytes), None) => QueryTerm::File { bytes, modality },
        (None, Some(t)) if modality.is_none() => QueryTerm::Text(t),
        (None, Some(_)) => return Err(invalid_query("`modality` applies to a `file` query")),
        _ => return Err(invalid_query("the form has no `file` (or `text`) field")),
    };
    req.terms.push((term, 1.0));
    Ok(req)
}

fn hit_dto(collection: &str, h: SearchHit) -> HitDto {
    HitDto {
        content_url: (h.modality != "vector").then(|| content_url(collection, &h.id)),
        id: h.id,
        score: h.score,
        modality: h.modality,
        metadata: h.metadata,
    }
}

/// Search a collection.
///
/// JSON: `{"query": ..., "k"?, "filter"?, "min_score"?, "offset"?, "exact"?, "ef_search"?}`
/// where `query` is a text (`"a dog"`), a vector (`[0.1, ...]`), `{"text":...}`,
/// `{"vector":[...]}`, `{"item":"<id>"}`, or a list of weighted terms
/// `[{"text":"dog","weight":1},{"item":"<id>","weight":0.5},{"text":"grass","weight":-0.5}]`.
/// Multipart: a `file` field (or `text`), and form fields `k`, `modality`, `filter` (JSON),
/// `min_score`, `offset`, `exact`, `ef_search`.
#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "search",
    params(("name" = String, Path, description = "Collection name")),
    request_body(content(
        (SearchBody = "application/json"),
        (SearchForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "`invalid_query`, `invalid_filter`, `wrong_dimension`, `non_finite_vector`, `invalid_json`, ...", body = ErrorBody),
        (status = 404, description = "`collection_not_found`, or `item_not_found` for an item term", body = ErrorBody),
        (status = 415, description = "Unrecognised query file (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "Encoder queue full (`overloaded`)", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    Path(name): Path<String>,
    payload: Payload<SearchBody>,
) -> ApiResult<Json<SearchResponse>> {
    let req = match payload {
        Payload::Json(b) => request_from_json(b)?,
        Payload::Multipart(form) => request_from_form(&state, form).await?,
    };
    let hits = state.engine.search(&name, req).await?;
    Ok(Json(SearchResponse {
        hits: hits.into_iter().map(|h| hit_dto(&name, h)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(q: Value) -> Vec<(String, f32)> {
        parse_query(q)
            .unwrap()
            .into_iter()
            .map(|(t, w)| {
                let k = match t {
                    QueryTerm::Text(s) => format!("text:{s}"),
                    QueryTerm::Vector(v) => format!("vector:{}", v.len()),
                    QueryTerm::Item(s) => format!("item:{s}"),
                    QueryTerm::File { .. } => "file".into(),
                };
                (k, w)
            })
            .collect()
    }

    #[test]
    fn query_forms() {
        assert_eq!(kinds(json!("a dog")), [("text:a dog".into(), 1.0)]);
        assert_eq!(kinds(json!([0.5, 1, -2])), [("vector:3".into(), 1.0)]);
        assert_eq!(kinds(json!({"item": "x"})), [("item:x".into(), 1.0)]);
        assert_eq!(kinds(json!({"text": "t"})), [("text:t".into(), 1.0)]);
        assert_eq!(kinds(json!({"vector": [1.0]})), [("vector:1".into(), 1.0)]);
        assert_eq!(
            kinds(json!([
                {"text": "dog", "weight": 1},
                {"item": "i", "weight": 0.5},
                {"text": "grass", "weight": -0.5},
                {"vector": [1, 2]}
            ])),
            [
                ("text:dog".into(), 1.0),
                ("item:i".into(), 0.5),
                ("text:grass".into(), -0.5),
                ("vector:2".into(), 1.0)
            ]
        );
    }

    #[test]
    fn bad_queries_are_invalid_query() {
        for q in [
            json!([]),
            json!(3),
            json!(null),
            json!([1, "a"]),
            json!({"text": "a", "item": "b"}),
            json!({"txt": "a"}),
            json!({"text": 1}),
            json!([{"text": "a", "weight": "x"}]),
            json!({"vector": [1, "x"]}),
        ] {
            let e = parse_query(q.clone()).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code.as_ref()),
                (400, "invalid_query"),
                "{q}"
            );
        }
    }

    #[test]
    fn out_of_range_components_become_infinite() {
        let terms = parse_query(json!([1e39, 0.0])).unwrap();
        match &terms[0].0 {
            QueryTerm::Vector(v) => assert!(v[0].is_infinite()),
            _ => panic!(),
        }
    }
}
