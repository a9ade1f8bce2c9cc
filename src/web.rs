//! The browser demo's files (`web/`), embedded in the binary at build time so that the single
//! binary carries them.
//!
//! Owns: the list of assets with their media types and validators (ETags). Must not own: HTTP
//! (the routes and headers are in `api/web.rs`). The demo is plain HTML, CSS and ES modules:
//! there is no build step, and a file added to `web/` must be listed in [`ASSETS`] (a test
//! checks that the list and the folder agree).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// Path below `web/`, as served below `/assets/` (`index.html` is also served at `/`).
    pub path: &'static str,
    /// `Content-Type` to serve it with.
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `web/`.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("api.js", JS),
    asset!("app.js", JS),
    asset!("media.js", JS),
    asset!("render.js", JS),
];

/// The page served at `/`.
pub const INDEX: &str = "index.html";

/// The asset at `path` (below `web/`), if any.
pub fn get(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// A strong validator: the start of the SHA-256 of the bytes, quoted.
    pub fn etag(&self) -> &'static str {
        static TAGS: OnceLock<Vec<String>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            ASSETS
                .iter()
                .map(|a| {
                    let d = Sha256::digest(a.bytes);
                    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
                    format!("\"{hex}\"")
                })
                .collect()
        });
        let i = ASSETS
            .iter()
            .position(|a| std::ptr::eq(a, self))
            .expect("an asset of the list");
        &tags[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_and_the_folder_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
        assert!(get(INDEX).is_some());
    }

    #[test]
    fn etags_differ_by_content_and_are_quoted() {
        let a = get("app.js").unwrap().etag();
        let b = get("style.css").unwrap().etag();
        assert_ne!(a, b);
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 26);
    }
}
