//! One validated `Settings` struct: built-in defaults (the repository's `config.toml`) < a
//! configuration file < environment variables `OMNIBIND__SECTION__KEY` < command-line flags.
//!
//! Relative paths written in a configuration file (`server.data_dir`, a model's `path` and
//! `hub.cache_dir`) are taken from the file's own directory, as nginx and Prometheus do;
//! relative paths from the built-in defaults, the environment or a flag are taken from the
//! current directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::{Figment, Source};
use serde::{Deserialize, Serialize};

use crate::embed::hub::ModelRef;
use crate::embed::ModelSpec;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub embed: EmbedSettings,
    pub index: IndexSettings,
    pub auth: AuthSettings,
    pub metadata: MetadataSettings,
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

/// Limits on items' JSON metadata (sizes of its compact serialisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSettings {
    /// Largest metadata of one item, in bytes.
    pub max_item_bytes: usize,
    /// Largest metadata of all items of one upload together, in bytes.
    pub max_request_bytes: usize,
    /// Deepest nesting of arrays and objects in one item's metadata (the object is depth 1).
    pub max_depth: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Directory for the database, original files and index dumps.
    pub data_dir: PathBuf,
    /// Largest request body on JSON routes, in bytes.
    pub body_limit: usize,
    /// Largest request body on upload routes, in bytes.
    pub upload_limit: usize,
    /// Seconds before a request is answered 408.
    pub request_timeout_s: u64,
    /// Seconds a connection may take to send a request's line and headers, counted from when
    /// it opens or from the end of its previous answer (so also the idle keep-alive time).
    pub header_timeout_s: u64,
    /// Most bytes of a request's line and headers (the connection's read buffer).
    pub max_header_bytes: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most bytes one client's uploads may hold in the upload spool at once.
    pub spool_per_client: u64,
    /// Most bytes all uploads may hold in the upload spool at once.
    pub spool_total: u64,
    /// Origins allowed to call the API from a browser (CORS); empty: CORS off.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Requests per second per client (API key, or address without one) on the API routes;
    /// 0: no limit.
    #[serde(default)]
    pub rate_limit_per_s: f64,
    /// Requests a client may send at once before the rate applies.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
}

fn default_burst() -> u32 {
    50
}

/// Largest `metadata.max_depth`: the JSON parser refuses documents nested deeper than 128.
pub const MAX_METADATA_DEPTH: usize = 127;

/// Smallest `server.max_header_bytes` (the HTTP/1 read buffer cannot be smaller).
pub const MIN_HEADER_BYTES: usize = 8192;

/// Shortest API key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// API keys. Either key unset (or empty) means that key does not exist; with neither, every
/// route is open and the server only listens on a loopback address unless
/// `allow_unauthenticated_remote` says otherwise.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Full access: create and delete collections, upload and delete items, and everything the
    /// read key may do.
    #[serde(default, deserialize_with = "key")]
    pub admin_key: Option<String>,
    /// Read-only access: list, get, search, embed and classify.
    #[serde(default, deserialize_with = "key")]
    pub read_key: Option<String>,
    /// Listen on a non-loopback address with no key configured.
    #[serde(default)]
    pub allow_unauthenticated_remote: bool,
}

impl AuthSettings {
    /// Whether any key is configured (and so every API route needs one).
    pub fn enabled(&self) -> bool {
        self.admin_key.is_some() || self.read_key.is_some()
    }
}

/// Keys are never printed, not even in debug output.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |k: &Option<String>| k.as_ref().map(|_| "<set>");
        f.debug_struct("AuthSettings")
            .field("admin_key", &shown(&self.admin_key))
            .field("read_key", &shown(&self.read_key))
            .field(
                "allow_unauthenticated_remote",
                &self.allow_unauthenticated_remote,
            )
            .finish()
    }
}

/// A key from the configuration: a string (an all-digit key from the environment arrives as a
/// number); empty means unset.
fn key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    let s = match Option::<Raw>::deserialize(d)? {
        None => return Ok(None),
        Some(Raw::Text(s)) => s,
        Some(Raw::Unsigned(n)) => n.to_string(),
        Some(Raw::Signed(n)) => n.to_string(),
    };
    Ok((!s.is_empty()).then_some(s))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSettings {
    /// Encoder jobs queued or running at once; beyond it requests get 503.
    pub queue_capacity: usize,
    /// Forward passes running at the same time.
    pub workers: usize,
    /// Most memory decoding one uploaded file may need, in bytes, computed from its header
    /// before it is decoded; over it the file is refused (`400 invalid_media`).
    pub decode_max_bytes: u64,
    /// Decode memory shared by the files of one request decoded in parallel, in bytes; a file
    /// that does not fit waits for the request's other files.
    pub decode_upload_bytes: u64,
    /// Decode memory shared by every request, in bytes.
    pub decode_process_bytes: u64,
    /// Milliseconds a decode waits for room in `decode_process_bytes`; then `503 overloaded`
    /// with `Retry-After`.
    pub decode_wait_ms: u64,
}

impl EmbedSettings {
    /// The decode-memory limits these settings describe.
    pub fn decode_limits(&self) -> crate::embed::DecodeLimits {
        crate::embed::DecodeLimits {
            per_decode: self.decode_max_bytes,
            per_upload: self.decode_upload_bytes,
            process: self.decode_process_bytes,
            wait: std::time::Duration::from_millis(self.decode_wait_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSettings {
    /// Index kind of every collection: `hnsw` (the project's own graph, the default) or
    /// `hnsw_rs` (the hnsw_rs crate's graph, kept for comparison). Dumps of another kind are
    /// rebuilt from the store at start-up.
    #[serde(default)]
    pub kind: crate::index::IndexKind,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub exact_threshold: usize,
}

/// Command-line overrides, applied last.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// `--allow-unauthenticated-remote`.
    pub allow_unauthenticated_remote: bool,
    /// `--model REF`: serve this one model instead of the configured list.
    pub model: Option<String>,
    /// `--model-name NAME`: the name `--model` is served under (default: from the reference).
    pub model_name: Option<String>,
    /// `--allow-download`: fetch missing Hugging Face files for every served model.
    pub allow_download: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layered configuration.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed("OMNIBIND__").split("__"))
    }

    fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            // A file that lists models replaces the default model list rather than extending it.
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(env);
        if let Some(listen) = overrides.listen {
            fig = fig.merge(("server.listen", listen.to_string()));
        }
        if let Some(dir) = &overrides.data_dir {
            fig = fig.merge(("server.data_dir", dir.display().to_string()));
        }
        if overrides.allow_unauthenticated_remote {
            fig = fig.merge(("auth.allow_unauthenticated_remote", true));
        }
        let mut s: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            s.resolve_file_paths(&fig, path)?;
        }
        s.apply_model_overrides(overrides)?;
        s.validate()?;
        Ok(s)
    }

    /// Makes the relative paths that `file` wrote absolute, against the file's directory.
    fn resolve_file_paths(&mut self, fig: &Figment, file: &Path) -> Result<(), ConfigError> {
        let file = std::path::absolute(file)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", file.display())))?;
        let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let canonical = std::fs::canonicalize(&file).ok();
        let from_file = |key: &str| {
            fig.find_metadata(key).is_some_and(|m| match &m.source {
                Some(Source::File(p)) => std::fs::canonicalize(p).ok() == canonical,
                _ => false,
            })
        };
        if from_file("server.data_dir") && self.server.data_dir.is_relative() {
            self.server.data_dir = base.join(&self.server.data_dir);
        }
        // A list of models comes from one source as a whole (a file's list replaces the
        // defaults' list).
        if from_file("models") {
            for (i, model) in self.models.iter_mut().enumerate() {
                // Parsed once here, so that the reference names the same thing wherever the
                // server is started; errors name the entry.
                match ModelRef::parse_in(&model.path, &base) {
                    Ok(ModelRef::Local(dir)) => model.path = dir.display().to_string(),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(ConfigError::Invalid(format!(
                            "{}: models[{i}].path: {e}",
                            file.display()
                        )))
                    }
                }
                if let Some(cache) = model.hub.cache_dir.as_mut().filter(|c| c.is_relative()) {
                    *cache = base.join(&*cache);
                }
            }
        }
        Ok(())
    }

    /// `--model`, `--model-name` and `--allow-download`.
    fn apply_model_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(reference) = &o.model {
            let parsed = ModelRef::parse(reference)
                .map_err(|e| ConfigError::Invalid(format!("--model: {e}")))?;
            let name = match &o.model_name {
                Some(name) => name.clone(),
                None => parsed.suggested_name().ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "--model {reference}: no name can be made from it; pass --model-name"
                    ))
                })?,
            };
            let path = match parsed {
                ModelRef::Local(dir) => dir.display().to_string(),
                _ => reference.clone(),
            };
            self.models = vec![ModelSpec::new(name, path)];
        } else if o.model_name.is_some() {
            return Err(ConfigError::Invalid(
                "--model-name goes with --model".into(),
            ));
        }
        if o.allow_download {
            for model in &mut self.models {
                model.hub.allow_download = true;
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.embed.queue_capacity == 0 || self.embed.workers == 0 {
            return bad("embed.queue_capacity and embed.workers must be at least 1");
        }
        if let Err(e) = self.embed.decode_limits().validate() {
            return Err(ConfigError::Invalid(format!(
                "embed.decode_max_bytes, embed.decode_upload_bytes, embed.decode_process_bytes: {e}"
            )));
        }
        if self.embed.decode_wait_ms > 600_000 {
            return bad("embed.decode_wait_ms must be at most 600000 (10 minutes)");
        }
        if self.server.body_limit == 0 || self.server.upload_limit == 0 {
            return bad("server.body_limit and server.upload_limit must be positive");
        }
        if let Err(e) = crate::index::validate_hnsw_params(
            self.index.m,
            self.index.ef_construction,
            self.index.ef_search,
        ) {
            return Err(ConfigError::Invalid(format!("index: {e}")));
        }
        let md = &self.metadata;
        if md.max_item_bytes < 2 || md.max_request_bytes < md.max_item_bytes {
            return bad(
                "metadata.max_item_bytes must be at least 2 (`{}`) and metadata.max_request_bytes \
                 at least metadata.max_item_bytes",
            );
        }
        if !(1..=MAX_METADATA_DEPTH).contains(&md.max_depth) {
            return Err(ConfigError::Invalid(format!(
                "metadata.max_depth must be in 1..={MAX_METADATA_DEPTH}"
            )));
        }
        let server = &self.server;
        if server.header_timeout_s == 0 {
            return bad("server.header_timeout_s must be positive");
        }
        if server.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::Invalid(format!(
                "server.max_header_bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if server.max_connections == 0 {
            return bad("server.max_connections must be at least 1");
        }
        if server.spool_per_client < server.upload_limit as u64
            || server.spool_total < server.spool_per_client
        {
            return bad(
                "server.spool_per_client must be at least server.upload_limit, and \
                 server.spool_total at least server.spool_per_client",
            );
        }
        let rate = self.server.rate_limit_per_s;
        if !(0.0..=1e6).contains(&rate) || self.server.rate_limit_burst == 0 {
            return bad("server.rate_limit_per_s must be in 0..=1000000 and server.rate_limit_burst at least 1");
        }
        self.validate_auth()?;
        for origin in &self.server.cors_origins {
            if !is_origin(origin) {
                return Err(ConfigError::Invalid(format!(
                    "server.cors_origins: `{origin}` is not an origin (scheme://host[:port], \
                     no path, no wildcard)"
                )));
            }
        }
        let mut names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("model names must be unique");
        }
        Ok(())
    }

    /// Keys long enough, distinct, without spaces; a read key only beside an admin key; and no
    /// open server on a non-loopback address unless asked for.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        for (name, k) in [("admin_key", &auth.admin_key), ("read_key", &auth.read_key)] {
            let Some(k) = k else { continue };
            if k.chars().count() < MIN_KEY_LEN {
                return Err(ConfigError::Invalid(format!(
                    "auth.{name} must be at least {MIN_KEY_LEN} characters long"
                )));
            }
            if !k.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::Invalid(format!(
                    "auth.{name} may only hold printable ASCII characters without spaces"
                )));
            }
        }
        match (&auth.admin_key, &auth.read_key) {
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "auth.read_key is set without auth.admin_key: nobody could change any data"
                        .into(),
                ))
            }
            (Some(a), Some(r)) if a == r => {
                return Err(ConfigError::Invalid(
                    "auth.admin_key and auth.read_key must differ".into(),
                ))
            }
            _ => {}
        }
        let ip = self.server.listen.ip();
        if !auth.enabled() && !ip.is_loopback() && !auth.allow_unauthenticated_remote {
            return Err(ConfigError::Invalid(format!(
                "server.listen is {}, which other machines can reach, and no API key is \
                 configured: set auth.admin_key (and auth.read_key), or listen on 127.0.0.1, or \
                 allow an open server with auth.allow_unauthenticated_remote = true \
                 (--allow-unauthenticated-remote)",
                self.server.listen
            )));
        }
        Ok(())
    }
}

/// `scheme://host[:port]` as browsers send it in `Origin`.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_graphic())
        && !rest.contains(['/', '*', '?', '#', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let s = Settings::load(None, &Overrides::default()).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:6600");
        assert_eq!(s.index.m, 16);
        assert_eq!(s.models.len(), 1);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[server]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/x\"\n",
            )?;
            jail.set_env("OMNIBIND__SERVER__DATA_DIR", "/from-env");
            jail.set_env("OMNIBIND__EMBED__WORKERS", "3");
            let s = Settings::load(Some(Path::new("c.toml")), &Overrides::default()).unwrap();
            assert_eq!(s.server.listen.port(), 7000);
            assert_eq!(s.server.data_dir, PathBuf::from("/from-env"));
            assert_eq!(s.embed.workers, 3);
            let o = Overrides {
                data_dir: Some("/cli".into()),
                ..Default::default()
            };
            let s = Settings::load(Some(Path::new("c.toml")), &o).unwrap();
            assert_eq!(s.server.data_dir, PathBuf::from("/cli"));
            Ok(())
        });
    }

    /// The defaults without the environment (other tests set variables in a `Jail`).
    fn load_clean(o: &Overrides) -> Result<Settings, ConfigError> {
        Settings::load_with_env(None, o, Env::prefixed("OMNIBIND_UNUSED_IN_TESTS__"))
    }

    fn with(edit: impl FnOnce(&mut Settings)) -> Result<(), ConfigError> {
        let mut s = load_clean(&Overrides::default()).unwrap();
        edit(&mut s);
        s.validate()
    }

    #[test]
    fn connection_and_spool_limits_are_checked() {
        let err = |e: Result<(), ConfigError>| e.unwrap_err().to_string();
        assert!(with(|_| {}).is_ok());
        assert!(err(with(|s| s.server.header_timeout_s = 0)).contains("header_timeout_s"));
        assert!(err(with(|s| s.server.max_header_bytes = 8191)).contains("8192"));
        assert!(err(with(|s| s.server.max_connections = 0)).contains("max_connections"));
        assert!(err(with(|s| s.server.spool_per_client = 1)).contains("spool_per_client"));
        assert!(err(with(|s| {
            s.server.spool_total = s.server.spool_per_client - 1;
        }))
        .contains("spool_total"));
        let s = load_clean(&Overrides::default()).unwrap();
        assert_eq!(
            (s.server.header_timeout_s, s.server.max_header_bytes),
            (30, 65_536)
        );
        assert_eq!(
            (s.server.spool_per_client, s.server.spool_total),
            (512 << 20, 4 << 30)
        );
    }

    #[test]
    fn api_keys_are_checked() {
        let admin = "a".repeat(MIN_KEY_LEN);
        let read = "r".repeat(MIN_KEY_LEN);
        assert!(with(|s| s.auth.admin_key = Some(admin.clone())).is_ok());
        assert!(with(|s| {
            s.auth.admin_key = Some(admin.clone());
            s.auth.read_key = Some(read.clone());
        })
        .is_ok());
        let err = |e: Result<(), ConfigError>| e.unwrap_err().to_string();
        assert!(err(with(|s| s.auth.admin_key = Some("short".into()))).contains("at least 16"));
        assert!(err(with(|s| s.auth.admin_key = Some(format!("{admin} x")))).contains("printable"));
        assert!(err(with(|s| s.auth.read_key = Some(read.clone()))).contains("without"));
        assert!(err(with(|s| {
            s.auth.admin_key = Some(admin.clone());
            s.auth.read_key = Some(admin.clone());
        }))
        .contains("differ"));
        // Keys never show in debug output.
        let mut s = load_clean(&Overrides::default()).unwrap();
        s.auth.admin_key = Some(admin.clone());
        assert!(!format!("{s:?}").contains(&admin));
    }

    #[test]
    fn an_open_server_listens_on_loopback_unless_told_otherwise() {
        let remote: SocketAddr = "0.0.0.0:6600".parse().unwrap();
        let e = with(|s| s.server.listen = remote).unwrap_err().to_string();
        assert!(
            e.contains("no API key") && e.contains("allow_unauthenticated_remote"),
            "{e}"
        );
        assert!(with(|s| {
            s.server.listen = remote;
            s.auth.allow_unauthenticated_remote = true;
        })
        .is_ok());
        assert!(with(|s| {
            s.server.listen = remote;
            s.auth.admin_key = Some("k".repeat(MIN_KEY_LEN));
        })
        .is_ok());
        assert!(with(|s| s.server.listen = "[::1]:6600".parse().unwrap()).is_ok());
        let o = Overrides {
            listen: Some(remote),
            allow_unauthenticated_remote: true,
            ..Default::default()
        };
        assert!(load_clean(&o).unwrap().auth.allow_unauthenticated_remote);
        assert!(load_clean(&Overrides {
            listen: Some(remote),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn keys_and_origins_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("OMNIBIND__AUTH__ADMIN_KEY", "1234567890123456");
            jail.set_env("OMNIBIND__AUTH__READ_KEY", "read-key-abcdefgh");
            jail.set_env(
                "OMNIBIND__SERVER__CORS_ORIGINS",
                "[\"https://app.example\", \"http://localhost:8080\"]",
            );
            let s = Settings::load(None, &Overrides::default()).unwrap();
            assert_eq!(s.auth.admin_key.as_deref(), Some("1234567890123456"));
            assert_eq!(s.auth.read_key.as_deref(), Some("read-key-abcdefgh"));
            assert_eq!(s.server.cors_origins.len(), 2);
            jail.set_env(
                "OMNIBIND__SERVER__CORS_ORIGINS",
                "[\"https://a.example/path\"]",
            );
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("not an origin"), "{e}");
            jail.set_env("OMNIBIND__SERVER__CORS_ORIGINS", "[\"*\"]");
            assert!(Settings::load(None, &Overrides::default()).is_err());
            Ok(())
        });
        assert!(load_clean(&Overrides::default())
            .unwrap()
            .auth
            .admin_key
            .is_none());
    }

    #[test]
    fn decode_limits_default_and_must_nest() {
        let s = load_clean(&Overrides::default()).unwrap();
        let l = s.embed.decode_limits();
        assert_eq!(
            (l.per_decode, l.per_upload, l.process, l.wait.as_millis()),
            (512 << 20, 1 << 30, 2 << 30, 2000)
        );
        let err = |e: Result<(), ConfigError>| e.unwrap_err().to_string();
        assert!(err(with(|s| s.embed.decode_max_bytes = 0)).contains("decode_max_bytes"));
        assert!(err(with(|s| s.embed.decode_upload_bytes = 1 << 20)).contains("nest"));
        assert!(err(with(|s| s.embed.decode_process_bytes = 1 << 29)).contains("nest"));
        assert!(err(with(|s| s.embed.decode_wait_ms = 3_600_000)).contains("decode_wait_ms"));
        assert!(with(|s| {
            s.embed.decode_max_bytes = 64 << 20;
            s.embed.decode_upload_bytes = 64 << 20;
            s.embed.decode_process_bytes = 64 << 20;
        })
        .is_ok());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[server]\nlisen = \"x\"\n")?;
            assert!(Settings::load(Some(Path::new("a.toml")), &Overrides::default()).is_err());
            jail.create_file("m.toml", "[index]\nm = 4294967312\n")?;
            let e = Settings::load(Some(Path::new("m.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("m must be in 2..=255"), "{e}");
            jail.create_file("d.toml", "[metadata]\nmax_depth = 0\n")?;
            let e = Settings::load(Some(Path::new("d.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("max_depth"), "{e}");
            jail.set_env("OMNIBIND__METADATA__MAX_ITEM_BYTES", "1000");
            let s = Settings::load(None, &Overrides::default()).unwrap();
            assert_eq!(s.metadata.max_item_bytes, 1000);
            jail.set_env("OMNIBIND__METADATA__MAX_REQUEST_BYTES", "999");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("max_request_bytes"), "{e}");
            jail.create_file("b.toml", "[embed]\nworkers = 0\n")?;
            let e = Settings::load(Some(Path::new("b.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("workers"), "{e}");
            Ok(())
        });
        assert!(matches!(
            Settings::load(Some(Path::new("/no/such.toml")), &Overrides::default()),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn relative_paths_in_a_file_are_taken_from_its_directory() {
        figment::Jail::expect_with(|jail| {
            let root = std::path::absolute(jail.directory()).unwrap();
            std::fs::create_dir_all(root.join("etc/models/tuned")).unwrap();
            jail.create_file(
                "etc/omnibind.toml",
                "[server]\ndata_dir = \"var/data\"\n\n\
                 [[models]]\nname = \"a\"\npath = \"./models/mine\"\n\
                 hub = { cache_dir = \"hf\" }\n\n\
                 [[models]]\nname = \"b\"\npath = \"models/tuned\"\n\n\
                 [[models]]\nname = \"c\"\npath = \"openai/clip-vit-base-patch32\"\n\n\
                 [[models]]\nname = \"d\"\npath = \"builtin:default\"\n",
            )?;
            let s = Settings::load(Some(Path::new("etc/omnibind.toml")), &Overrides::default())
                .unwrap();
            assert_eq!(s.server.data_dir, root.join("etc/var/data"));
            let paths: Vec<&str> = s.models.iter().map(|m| m.path.as_str()).collect();
            let mine = root.join("etc/models/mine").display().to_string();
            let tuned = root.join("etc/models/tuned").display().to_string();
            assert_eq!(
                paths,
                [
                    &mine,
                    &tuned,
                    "openai/clip-vit-base-patch32",
                    "builtin:default"
                ]
            );
            assert_eq!(s.models[0].hub.cache_dir, Some(root.join("etc/hf")));
            // From the environment, relative paths stay relative to the current directory.
            jail.set_env("OMNIBIND__SERVER__DATA_DIR", "here");
            let s = Settings::load(Some(Path::new("etc/omnibind.toml")), &Overrides::default())
                .unwrap();
            assert_eq!(s.server.data_dir, PathBuf::from("here"));
            Ok(())
        });
    }

    #[test]
    fn the_model_flag_serves_one_model_by_its_own_name() {
        let o = Overrides {
            model: Some("openai/clip-vit-base-patch32".into()),
            allow_download: true,
            ..Default::default()
        };
        let s = load_clean(&o).unwrap();
        assert_eq!(s.models.len(), 1);
        assert_eq!(s.models[0].name, "clip-vit-base-patch32");
        assert_eq!(s.models[0].path, "openai/clip-vit-base-patch32");
        assert!(s.models[0].hub.allow_download);
        let o = Overrides {
            model: Some("builtin:default".into()),
            model_name: Some("bundled".into()),
            ..Default::default()
        };
        let s = load_clean(&o).unwrap();
        assert_eq!(
            (s.models[0].name.as_str(), s.models[0].path.as_str()),
            ("bundled", "builtin:default")
        );
        // The default configuration names the embedded model, not a relative path.
        let s = load_clean(&Overrides::default()).unwrap();
        assert_eq!(s.models[0].path, "builtin:default");
        assert!(!s.models[0].hub.allow_download);
    }
}
