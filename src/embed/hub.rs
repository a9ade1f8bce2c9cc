//! Finding a model's files. A model reference is one of three things, told apart without
//! guessing ([`ModelRef::parse`]):
//!
//! 1. `builtin:NAME`: a model embedded in the binary ([`super::builtin`]);
//! 2. a local directory: a reference that starts with `/`, `./`, `../` or `~`, or names a
//!    directory that exists;
//! 3. otherwise a Hugging Face model id (`owner/name`), resolved from the local Hugging Face
//!    cache and downloaded only when configuration allows it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EmbedError;

/// Files a model directory in Hugging Face layout (CLIP) must hold, with alternatives in order
/// of preference. An ImageBind directory needs only `config.json` here: its loader knows which
/// weight files it reads (`model.safetensors` or the official `.pth`) and needs
/// `tokenizer.json` only for a text tower.
pub const REQUIRED_FILES: &[&[&str]] = &[
    &["config.json"],
    &["tokenizer.json"],
    &[
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
    ],
];
/// Files used when present.
pub const OPTIONAL_FILES: &[&str] = &["preprocessor_config.json", "README.md"];

/// How hub ids are resolved.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HubOptions {
    /// Hugging Face cache directory. Default: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
    /// else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Download missing files from the Hugging Face hub. Off by default: a server should not
    /// reach out to the network unless told to.
    pub allow_download: bool,
    /// Hub revision (branch, tag or commit); `main` when unset.
    pub revision: Option<String>,
}

impl HubOptions {
    fn cache(&self) -> hf_hub::Cache {
        match (&self.cache_dir, std::env::var_os("HF_HUB_CACHE")) {
            (Some(dir), _) => hf_hub::Cache::new(dir.clone()),
            (None, Some(dir)) => hf_hub::Cache::new(PathBuf::from(dir)),
            (None, None) => hf_hub::Cache::from_env(),
        }
    }

    fn repo(&self, id: &str) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            id.to_string(),
            hf_hub::RepoType::Model,
            self.revision.clone().unwrap_or_else(|| "main".into()),
        )
    }
}

/// Whether `name` has the shape of a hub model id (`owner/name`).
pub fn looks_like_hub_id(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The first present file of each required group, or the groups that are missing.
fn check_dir(dir: &Path) -> Result<(), Vec<String>> {
    let missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|alts| !alts.iter().any(|f| dir.join(f).is_file()))
        .map(|alts| alts.join(" or "))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// A Hugging Face layout directory holds every file of [`REQUIRED_FILES`]; the error names
/// what it lacks.
pub fn check_hf_dir(dir: &Path) -> Result<(), EmbedError> {
    check_dir(dir).map_err(|missing| {
        EmbedError::ModelNotFound(format!("{} lacks {}", dir.display(), missing.join(", ")))
    })
}

/// What a model reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// `builtin:NAME`.
    Builtin(String),
    /// A local directory, as an absolute path.
    Local(PathBuf),
    /// A Hugging Face model id; `tried` is the absolute local path that does not exist.
    Hub { id: String, tried: PathBuf },
}

/// Where a reference can start to be a local directory whether or not it exists.
fn is_explicit_path(reference: &str) -> bool {
    reference.starts_with('/')
        || reference.starts_with('~')
        || reference.starts_with("./")
        || reference.starts_with("../")
        || reference == "."
        || reference == ".."
}

impl ModelRef {
    /// Parses a reference; relative paths are taken from the current directory.
    pub fn parse(reference: &str) -> Result<Self, EmbedError> {
        let cwd = std::env::current_dir().map_err(|e| EmbedError::io(".", e))?;
        Self::parse_in(reference, &cwd)
    }

    /// Parses a reference; relative paths are taken from `base` (a configuration file's
    /// directory, or the current directory).
    pub fn parse_in(reference: &str, base: &Path) -> Result<Self, EmbedError> {
        if let Some(name) = reference.strip_prefix(super::builtin::PREFIX) {
            return Ok(Self::Builtin(name.to_string()));
        }
        if reference.is_empty() {
            return Err(EmbedError::ModelNotFound(
                "the model reference is empty".into(),
            ));
        }
        let path = expand_home(reference)?;
        let local = std::path::absolute(base.join(&path)).map_err(|e| EmbedError::io(&path, e))?;
        if is_explicit_path(reference) || local.is_dir() {
            return Ok(Self::Local(local));
        }
        if looks_like_hub_id(reference) {
            return Ok(Self::Hub {
                id: reference.to_string(),
                tried: local,
            });
        }
        Err(EmbedError::ModelNotFound(format!(
            "`{reference}` is neither a model directory (there is no directory {}) nor a \
             Hugging Face model id (owner/name), nor a built-in model (builtin:NAME)",
            local.display()
        )))
    }
}

impl ModelRef {
    /// A name to serve the model under when none is given: the built-in name, the last part
    /// of a hub id, or the directory's own name.
    pub fn suggested_name(&self) -> Option<String> {
        match self {
            Self::Builtin(name) => Some(name.clone()),
            Self::Hub { id, .. } => id.rsplit('/').next().map(str::to_string),
            Self::Local(dir) => dir
                .components()
                .rfind(|c| matches!(c, std::path::Component::Normal(_)))
                .map(|c| c.as_os_str().to_string_lossy().into_owned()),
        }
        .filter(|n| !n.is_empty())
    }
}

/// `~` and `~/...` from `$HOME`; other references unchanged.
fn expand_home(reference: &str) -> Result<PathBuf, EmbedError> {
    let rest = match reference.strip_prefix('~') {
        None => return Ok(PathBuf::from(reference)),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        Some(_) => {
            return Err(EmbedError::ModelNotFound(format!(
                "`{reference}`: only `~/` (the current user's home) is understood, not `~user`"
            )))
        }
    };
    let home = std::env::var_os("HOME").ok_or_else(|| {
        EmbedError::ModelNotFound(format!(
            "`{reference}`: HOME is not set, so `~` means nothing"
        ))
    })?;
    Ok(PathBuf::from(home).join(rest))
}

/// The directory a parsed local or hub reference names (a built-in model has none).
pub fn resolve_dir(model: &ModelRef, opts: &HubOptions) -> Result<PathBuf, EmbedError> {
    match model {
        ModelRef::Builtin(name) => Err(EmbedError::ModelNotFound(format!(
            "`builtin:{name}` is embedded in the binary and has no directory; this command needs \
             a model directory"
        ))),
        ModelRef::Local(dir) => {
            if !dir.is_dir() {
                return Err(EmbedError::ModelNotFound(format!(
                    "model directory {} does not exist",
                    dir.display()
                )));
            }
            // Which weights and tokenizer it needs depends on the family (see REQUIRED_FILES).
            if !dir.join("config.json").is_file() {
                return Err(EmbedError::ModelNotFound(format!(
                    "{} lacks config.json",
                    dir.display()
                )));
            }
            Ok(dir.clone())
        }
        ModelRef::Hub { id, tried } => resolve_hub(id, tried, opts),
    }
}

/// Resolves a model reference (relative to the current directory) to a directory holding its
/// files.
pub fn resolve_model_dir(name: &str, opts: &HubOptions) -> Result<PathBuf, EmbedError> {
    resolve_dir(&ModelRef::parse(name)?, opts)
}

/// How to turn downloads on, as the error messages say it.
pub const ENABLE_DOWNLOADS: &str = "pass --allow-download to `omnibind serve`, or set \
     `hub.allow_download = true` in the model's [[models]] entry";

fn resolve_hub(name: &str, tried: &Path, opts: &HubOptions) -> Result<PathBuf, EmbedError> {
    let cache = opts.cache();
    let cached = cache.repo(opts.repo(name));
    if let Some(dir) = cached
        .get("config.json")
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        match check_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(missing) if !opts.allow_download => {
                return Err(EmbedError::ModelNotFound(format!(
                    "model `{name}` is only partly in the Hugging Face cache: {} lacks {}. \
                     Copy those files there, or enable downloads ({ENABLE_DOWNLOADS}).",
                    dir.display(),
                    missing.join(", ")
                )))
            }
            Err(_) => {}
        }
    }
    if !opts.allow_download {
        let repo_dir = cache.path().join(opts.repo(name).folder_name());
        let revision = opts.revision.as_deref().unwrap_or("main");
        return Err(EmbedError::ModelNotFound(format!(
            "`{name}` is neither a local directory (there is no directory {tried}) nor, as a \
             Hugging Face model id, in the cache at {cache}, and downloads are disabled. Either pass the directory that holds config.json, \
             tokenizer.json and model.safetensors (start a relative path with ./), or put those \
             files in {repo}/snapshots/<commit>/ with the commit written in \
             {repo}/refs/{revision}, or enable downloads ({ENABLE_DOWNLOADS}).",
            tried = tried.display(),
            cache = cache.path().display(),
            repo = repo_dir.display(),
        )));
    }
    download(name, opts)
}

fn download(name: &str, opts: &HubOptions) -> Result<PathBuf, EmbedError> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(opts.cache())
        .with_progress(true)
        .build()
        .map_err(|e| EmbedError::Download(e.to_string()))?;
    let repo = api.repo(opts.repo(name));
    let mut dir = None;
    for alternatives in REQUIRED_FILES {
        let mut last_err = None;
        let mut got = None;
        for file in *alternatives {
            match repo.get(file) {
                Ok(p) => {
                    got = Some(p);
                    break;
                }
                Err(e) => last_err = Some(format!("{file}: {e}")),
            }
        }
        let p = got.ok_or_else(|| {
            EmbedError::Download(format!("{name}: {}", last_err.unwrap_or_default()))
        })?;
        if p.ends_with("model.safetensors.index.json") {
            for shard in safetensors_shards(&p)? {
                repo.get(&shard)
                    .map_err(|e| EmbedError::Download(format!("{shard}: {e}")))?;
            }
        }
        dir = p.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL_FILES {
        let _ = repo.get(file);
    }
    dir.ok_or_else(|| EmbedError::Download(format!("{name}: nothing downloaded")))
}

/// Shard file names listed by a `model.safetensors.index.json`.
pub fn safetensors_shards(index: &Path) -> Result<Vec<String>, EmbedError> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| EmbedError::io(index, e))?;
    let idx: Index = serde_json::from_str(&text)
        .map_err(|e| EmbedError::Config(format!("{}: {e}", index.display())))?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if files.iter().any(|f| f.contains('/') || f.contains("..")) {
        return Err(EmbedError::Config(format!(
            "{}: shard names must be plain file names",
            index.display()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shape() {
        assert!(looks_like_hub_id("openai/clip-vit-base-patch32"));
        assert!(!looks_like_hub_id("clip"));
        assert!(!looks_like_hub_id("../etc"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("a/.."));
    }

    #[test]
    fn offline_miss_names_the_files_and_the_place() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = HubOptions {
            cache_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        let e = resolve_model_dir("openai/clip-vit-base-patch32", &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("downloads are disabled"), "{e}");
        assert!(
            e.contains("model.safetensors") && e.contains("tokenizer.json"),
            "{e}"
        );
        assert!(e.contains("models--openai--clip-vit-base-patch32"), "{e}");
    }

    #[test]
    fn resolves_from_a_populated_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--acme--tiny");
        let snap = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        let opts = HubOptions {
            cache_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        let e = resolve_model_dir("acme/tiny", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only partly") && e.contains("model.safetensors"),
            "{e}"
        );
        std::fs::write(snap.join("model.safetensors"), "").unwrap();
        assert_eq!(resolve_model_dir("acme/tiny", &opts).unwrap(), snap);
    }

    #[test]
    fn directory_missing_files_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve_model_dir(tmp.path().to_str().unwrap(), &HubOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks config.json"), "{e}");
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        assert!(resolve_model_dir(tmp.path().to_str().unwrap(), &HubOptions::default()).is_ok());
        let e = check_hf_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("model.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn references_are_told_apart_without_guessing() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        std::fs::create_dir_all(b.join("acme/local")).unwrap();
        let parse = |r: &str| ModelRef::parse_in(r, b).unwrap();
        assert_eq!(
            parse("builtin:default"),
            ModelRef::Builtin("default".into())
        );
        // Explicit paths are local whether or not they exist.
        assert_eq!(parse("./missing"), ModelRef::Local(b.join("missing")));
        assert_eq!(parse("../up"), ModelRef::Local(b.join("../up")));
        assert_eq!(parse("/abs/dir"), ModelRef::Local("/abs/dir".into()));
        // A hub-shaped name is local when such a directory exists, a hub id otherwise.
        assert_eq!(parse("acme/local"), ModelRef::Local(b.join("acme/local")));
        assert_eq!(
            parse("models/default"),
            ModelRef::Hub {
                id: "models/default".into(),
                tried: b.join("models/default")
            }
        );
        let e = ModelRef::parse_in("a/b/c", b).unwrap_err().to_string();
        assert!(
            e.contains("neither a model directory") && e.contains("a/b/c"),
            "{e}"
        );
        assert!(ModelRef::parse_in("~someone/x", b).is_err());
    }

    #[test]
    fn a_missing_local_directory_names_its_absolute_path() {
        let base = tempfile::tempdir().unwrap();
        let model = ModelRef::parse_in("./models/mine", base.path()).unwrap();
        let e = resolve_dir(&model, &HubOptions::default())
            .unwrap_err()
            .to_string();
        let abs = base.path().join("models/mine");
        assert!(
            e.contains(&format!("model directory {} does not exist", abs.display())),
            "{e}"
        );
        assert!(!e.contains("Hugging Face"), "{e}");
    }

    #[test]
    fn a_missing_hub_id_names_both_places_and_how_to_download() {
        let base = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let opts = HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        };
        let model = ModelRef::parse_in("models/default", base.path()).unwrap();
        let e = resolve_dir(&model, &opts).unwrap_err().to_string();
        let tried = base.path().join("models/default");
        assert!(
            e.contains(&format!("there is no directory {}", tried.display())),
            "{e}"
        );
        assert!(e.contains(&cache.path().display().to_string()), "{e}");
        assert!(
            e.contains("--allow-download") && e.contains("hub.allow_download"),
            "{e}"
        );
    }
}
