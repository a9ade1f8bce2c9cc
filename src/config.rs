//! One validated `Settings` struct: built-in defaults (the repository's `config.toml`) < a
//! configuration file < environment variables `OMNIBIND__SECTION__KEY` < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::embed::ModelSpec;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub embed: EmbedSettings,
    pub index: IndexSettings,
    #[serde(default)]
    pub models: Vec<ModelSpec>,
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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSettings {
    /// Encoder jobs queued or running at once; beyond it requests get 503.
    pub queue_capacity: usize,
    /// Forward passes running at the same time.
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSettings {
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
        let s: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.embed.queue_capacity == 0 || self.embed.workers == 0 {
            return bad("embed.queue_capacity and embed.workers must be at least 1");
        }
        if self.server.body_limit == 0 || self.server.upload_limit == 0 {
            return bad("server.body_limit and server.upload_limit must be positive");
        }
        if !(2..=255).contains(&self.index.m)
            || self.index.ef_construction == 0
            || self.index.ef_search == 0
        {
            return bad("index.m must be in 2..=255 and ef values at least 1");
        }
        let mut names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("model names must be unique");
        }
        Ok(())
    }
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

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[server]\nlisen = \"x\"\n")?;
            assert!(Settings::load(Some(Path::new("a.toml")), &Overrides::default()).is_err());
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
}
