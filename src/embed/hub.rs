//! Finding a model's files: a local directory, or a Hugging Face model id resolved from the
//! local Hugging Face cache, downloaded only when configuration allows it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EmbedError;

/// Files a model directory must hold, with alternatives in order of preference.
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

/// Resolves a model name to a directory holding its files.
pub fn resolve_model_dir(name: &str, opts: &HubOptions) -> Result<PathBuf, EmbedError> {
    let path = Path::new(name);
    if path.is_dir() {
        return check_dir(path)
            .map(|_| path.to_path_buf())
            .map_err(|missing| {
                EmbedError::ModelNotFound(format!(
                    "{} lacks {}",
                    path.display(),
                    missing.join(", ")
                ))
            });
    }
    if !looks_like_hub_id(name) {
        return Err(EmbedError::ModelNotFound(format!(
            "`{name}` is neither a model directory nor a Hugging Face model id (owner/name)"
        )));
    }
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
                     Copy those files there, or enable downloads ([models] allow_download = true).",
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
            "model `{name}` is not in the Hugging Face cache at {cache}, and downloads are disabled. \
             Either put config.json, tokenizer.json, preprocessor_config.json and model.safetensors \
             in {repo}/snapshots/<commit>/ with the commit written in {repo}/refs/{revision}, \
             or pass the directory that holds them as the model path, or enable downloads \
             ([models] allow_download = true).",
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
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        let e = resolve_model_dir(tmp.path().to_str().unwrap(), &HubOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
