//! What this binary was built from: version, git commit and cargo features, as
//! `omnibind --version` prints them.

use std::sync::LazyLock;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (`unknown` outside a git checkout), with
/// `-modified` when the working tree had uncommitted changes.
pub fn commit() -> String {
    let sha = option_env!("VERGEN_GIT_SHA").unwrap_or("");
    if sha.is_empty() || sha.starts_with("VERGEN") {
        return "unknown".into();
    }
    match option_env!("VERGEN_GIT_DIRTY") {
        Some("true") => format!("{sha}-modified"),
        _ => sha.to_string(),
    }
}

/// The enabled cargo features, as `Cargo.toml` names them, sorted.
pub fn features() -> Vec<String> {
    let mut list: Vec<String> = option_env!("VERGEN_CARGO_FEATURES")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        // `default` is the name of a set of features, not a feature.
        .filter(|f| !f.is_empty() && *f != "default" && !f.starts_with("VERGEN"))
        .map(|f| f.replace('_', "-"))
        .collect();
    list.sort();
    list
}

/// `0.1.0 (commit 0123abcd, features: builtin-model, cuda)`.
pub static VERSION_LINE: LazyLock<String> = LazyLock::new(|| {
    let features = features();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    format!("{VERSION} (commit {}, features: {features})", commit())
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_the_commit_and_the_features() {
        assert!(VERSION_LINE.starts_with(VERSION), "{}", *VERSION_LINE);
        assert!(VERSION_LINE.contains("(commit "), "{}", *VERSION_LINE);
        assert_eq!(
            features().contains(&"builtin-model".to_string()),
            cfg!(feature = "builtin-model")
        );
        assert_eq!(
            features().contains(&"cuda".to_string()),
            cfg!(feature = "cuda")
        );
        assert!(!features().contains(&"default".to_string()));
    }
}
