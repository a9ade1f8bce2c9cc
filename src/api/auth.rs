//! API keys: which access each route needs ([`required`]), the keys the server holds
//! ([`Keys`]) and the middleware that checks `Authorization: Bearer <key>` ([`require`]).
//!
//! Keys are kept only as SHA-256 digests and a presented key is compared digest to digest in
//! constant time, so neither the comparison's duration nor a memory dump gives a key away. The
//! `Authorization` header is marked sensitive in `app.rs`, so it never reaches a log.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::AppState;
use crate::config::AuthSettings;

/// What a request needs, or what a key grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// The demo page and its assets, health, readiness and the OpenAPI document.
    Public,
    /// Listing, getting, searching, embedding, classifying and metrics.
    Read,
    /// Creating and deleting collections, uploading and deleting items.
    Admin,
}

/// The access a request needs, from its method and path alone (before routing, so an unknown
/// route under `/v1/` needs a key like the known ones and reveals nothing).
pub fn required(method: &Method, path: &str) -> Access {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let public = matches!(
        segments.as_slice(),
        [""] | ["healthz"] | ["readyz"] | ["openapi.json"] | ["assets", _]
    );
    if public {
        return Access::Public;
    }
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return Access::Read;
    }
    // POST routes that change nothing.
    let reads = matches!(
        segments.as_slice(),
        ["v1", "embed"] | ["v1", "classify"] | ["v1", "collections", _, "search"]
    );
    if *method == Method::POST && reads {
        Access::Read
    } else {
        Access::Admin
    }
}

/// The configured keys, as digests.
#[derive(Clone, Default)]
pub struct Keys {
    admin: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    pub fn new(auth: &AuthSettings) -> Self {
        Keys {
            admin: auth.admin_key.as_deref().map(digest),
            read: auth.read_key.as_deref().map(digest),
        }
    }

    /// Whether any key is configured; without one every route is public.
    pub fn enabled(&self) -> bool {
        self.admin.is_some() || self.read.is_some()
    }

    /// The access `presented` grants, if it is one of the keys. Both keys are always compared,
    /// so the time taken does not tell which one matched.
    pub fn grant(&self, presented: &str) -> Option<Access> {
        let d = digest(presented);
        let is = |k: &Option<[u8; 32]>| k.is_some_and(|k| bool::from(k[..].ct_eq(&d[..])));
        let (admin, read) = (is(&self.admin), is(&self.read));
        if admin {
            Some(Access::Admin)
        } else if read {
            Some(Access::Read)
        } else {
            None
        }
    }
}

/// Why a request carries no valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <key>`.
    Malformed,
    /// A bearer token that is neither key.
    Invalid,
}

impl Keys {
    /// The access the request's `Authorization: Bearer <key>` grants, or why it grants none.
    pub fn check(&self, headers: &HeaderMap) -> Result<Access, KeyProblem> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(KeyProblem::Missing)?;
        let token = bearer(value).ok_or(KeyProblem::Malformed)?;
        self.grant(token).ok_or(KeyProblem::Invalid)
    }
}

/// The bearer token of an `Authorization` header, if it has the `Bearer` scheme.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::unauthorized(message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"omnibind\""),
    );
    r
}

/// Middleware: lets a request through when the route is public, no key is configured, or it
/// carries a key granting the access the route needs; otherwise answers `401 unauthorized`
/// (no key, or not a valid one) or `403 forbidden` (the read key on a route that changes data).
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.keys;
    let need = required(req.method(), req.uri().path());
    if !keys.enabled() || need == Access::Public {
        return next.run(req).await;
    }
    match keys.check(req.headers()) {
        Err(KeyProblem::Missing) => {
            unauthorized("this route needs an API key: send `Authorization: Bearer <key>`")
        }
        Err(KeyProblem::Malformed) => {
            unauthorized("the Authorization header must be `Bearer <key>`")
        }
        Err(KeyProblem::Invalid) => unauthorized("the API key is not valid"),
        Ok(granted) if granted < need => ApiError::forbidden(
            "the read-only key cannot change data; this route needs the admin key",
        )
        .into_response(),
        Ok(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_right_access() {
        use Access::*;
        let cases = [
            ("GET", "/", Public),
            ("GET", "/assets/app.js", Public),
            ("GET", "/healthz", Public),
            ("GET", "/readyz", Public),
            ("GET", "/openapi.json", Public),
            ("GET", "/metrics", Read),
            ("GET", "/v1/models", Read),
            ("GET", "/v1/collections", Read),
            ("GET", "/v1/collections/c/items/x/content", Read),
            ("HEAD", "/v1/collections/c", Read),
            ("POST", "/v1/collections/c/search", Read),
            ("POST", "/v1/embed", Read),
            ("POST", "/v1/classify", Read),
            ("POST", "/v1/collections", Admin),
            ("DELETE", "/v1/collections/c", Admin),
            ("POST", "/v1/collections/c/items", Admin),
            ("DELETE", "/v1/collections/c/items/search", Admin),
            ("PUT", "/v1/collections/c/search", Admin),
            ("POST", "/v1/unknown", Admin),
            ("GET", "/v1/unknown", Read),
            ("GET", "/assets/a/b", Read),
        ];
        for (m, p, want) in cases {
            assert_eq!(required(&m.parse().unwrap(), p), want, "{m} {p}");
        }
    }

    #[test]
    fn keys_grant_their_access_only() {
        let auth = AuthSettings {
            admin_key: Some("admin-key-0123456789".into()),
            read_key: Some("read-key-0123456789".into()),
            allow_unauthenticated_remote: false,
        };
        let keys = Keys::new(&auth);
        assert!(keys.enabled());
        assert_eq!(keys.grant("admin-key-0123456789"), Some(Access::Admin));
        assert_eq!(keys.grant("read-key-0123456789"), Some(Access::Read));
        assert_eq!(keys.grant("read-key-012345678"), None);
        assert_eq!(keys.grant(""), None);
        let none = Keys::new(&AuthSettings::default());
        assert!(!none.enabled());
        assert_eq!(none.grant(""), None);
    }

    #[test]
    fn headers_are_checked_for_a_key() {
        let keys = Keys::new(&AuthSettings {
            admin_key: Some("admin-key-0123456789".into()),
            read_key: None,
            allow_unauthenticated_remote: false,
        });
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(keys.check(&HeaderMap::new()), Err(KeyProblem::Missing));
        assert_eq!(keys.check(&with("Basic x")), Err(KeyProblem::Malformed));
        assert_eq!(keys.check(&with("Bearer nope")), Err(KeyProblem::Invalid));
        assert_eq!(
            keys.check(&with("Bearer admin-key-0123456789")),
            Ok(Access::Admin)
        );
    }

    #[test]
    fn bearer_tokens() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(&v("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&v("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&v("Basic abc")), None);
        assert_eq!(bearer(&v("Bearer ")), None);
        assert_eq!(bearer(&v("abc")), None);
    }
}
