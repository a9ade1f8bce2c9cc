//! Reading the OpenMoji npm package (`openmoji-<version>.tgz`, as `npm pack` writes it)
//! directly: `data/openmoji.csv`, `package.json` and the colour SVGs `color/svg/<HEXCODE>.svg`.
//! Paths are matched by their suffix inside the archive, so the leading `package/` folder is
//! not assumed.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One row of `data/openmoji.csv` (the columns this command uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emoji {
    pub emoji: String,
    pub hexcode: String,
    pub group: String,
    pub subgroup: String,
    pub annotation: String,
    /// `tags` then `openmoji_tags`, split on commas, trimmed, without duplicates.
    pub tags: Vec<String>,
    /// `skintone_base_hexcode`, or the hexcode itself when the row is no skin-tone variant.
    pub base_hexcode: String,
}

/// The parts of the package the dataset is made from.
#[derive(Debug, Default)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub emojis: Vec<Emoji>,
    /// Colour SVG bytes by hexcode.
    pub svgs: HashMap<String, Vec<u8>>,
    /// SHA-256 of the `.tgz` file, hex.
    pub sha256: String,
}

/// Reads the package from a gzip-compressed tar file.
pub fn read_package(path: &Path) -> Result<Package> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read_package_bytes(&bytes).with_context(|| format!("reading package {}", path.display()))
}

/// Reads the package from the bytes of its `.tgz`.
pub fn read_package_bytes(tgz: &[u8]) -> Result<Package> {
    use sha2::Digest;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut csv = None;
    let mut package_json = None;
    let mut svgs = HashMap::new();
    for entry in archive
        .entries()
        .context("not a gzip-compressed tar archive")?
    {
        let mut entry = entry.context("reading archive entry")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().replace('\\', "/");
        let wanted_svg = name
            .rsplit_once("/color/svg/")
            .or_else(|| name.strip_prefix("color/svg/").map(|s| ("", s)))
            .and_then(|(_, file)| file.strip_suffix(".svg"))
            .filter(|hex| !hex.contains('/'))
            .map(str::to_owned);
        let is_csv = name == "data/openmoji.csv" || name.ends_with("/data/openmoji.csv");
        let is_pkg = name == "package.json" || name.ends_with("/package.json");
        if wanted_svg.is_none() && !is_csv && !(is_pkg && package_json.is_none()) {
            continue;
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf)?;
        if let Some(hex) = wanted_svg {
            svgs.insert(hex, buf);
        } else if is_csv {
            csv = Some(buf);
        } else if name.matches('/').count() <= 1 {
            package_json = Some(buf);
        }
    }
    let Some(csv) = csv else {
        bail!("the archive holds no data/openmoji.csv: is it the openmoji npm package?");
    };
    if svgs.is_empty() {
        bail!("the archive holds no color/svg/*.svg files");
    }
    let (name, version) = match package_json {
        Some(b) => {
            let v: serde_json::Value =
                serde_json::from_slice(&b).context("parsing package.json")?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            (s("name"), s("version"))
        }
        None => (String::new(), String::new()),
    };
    Ok(Package {
        name,
        version,
        emojis: parse_csv(&csv)?,
        svgs,
        sha256: hex(&sha2::Sha256::digest(tgz)),
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
struct Row {
    emoji: String,
    hexcode: String,
    group: String,
    subgroups: String,
    annotation: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    openmoji_tags: String,
    #[serde(default)]
    skintone_base_hexcode: String,
}

/// Parses `openmoji.csv` (header row; extra columns are ignored). Rows without a hexcode or
/// annotation are an error.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<Emoji>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let mut out = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.with_context(|| format!("openmoji.csv row {}", i + 2))?;
        let hexcode = row.hexcode.trim().to_owned();
        let annotation = row.annotation.trim().to_owned();
        if hexcode.is_empty() || annotation.is_empty() {
            bail!("openmoji.csv row {}: empty hexcode or annotation", i + 2);
        }
        let mut tags: Vec<String> = Vec::new();
        for t in row.tags.split(',').chain(row.openmoji_tags.split(',')) {
            let t = t.trim();
            if !t.is_empty() && !tags.iter().any(|x| x == t) {
                tags.push(t.to_owned());
            }
        }
        let base = row.skintone_base_hexcode.trim();
        out.push(Emoji {
            emoji: row.emoji,
            base_hexcode: if base.is_empty() {
                hexcode.clone()
            } else {
                base.to_owned()
            },
            hexcode,
            group: row.group.trim().to_owned(),
            subgroup: row.subgroups.trim().to_owned(),
            annotation,
            tags,
        });
    }
    Ok(out)
}

/// Caption templates over an emoji's annotation, subgroup and tags. Every emoji gets the
/// annotation templates; each tag different from the annotation adds the tag templates (at
/// most [`MAX_TAGS`] tags). Duplicates are dropped, order is kept.
pub const ANNOTATION_TEMPLATES: &[&str] = &[
    "{annotation}",
    "an emoji of {annotation}",
    "a picture of {annotation}",
    "an icon showing {annotation}",
    "{subgroup}: {annotation}",
];
/// Templates applied to each tag.
pub const TAG_TEMPLATES: &[&str] = &["a picture of {tag}", "an emoji about {tag}"];
/// Tags used for captions per emoji.
pub const MAX_TAGS: usize = 5;

/// The captions of an emoji (see [`ANNOTATION_TEMPLATES`]); the subgroup's hyphens become
/// spaces.
pub fn captions(e: &Emoji) -> Vec<String> {
    let subgroup = e.subgroup.replace('-', " ");
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for t in ANNOTATION_TEMPLATES {
        if t.contains("{subgroup}") && subgroup.is_empty() {
            continue;
        }
        push(
            t.replace("{annotation}", &e.annotation)
                .replace("{subgroup}", &subgroup),
        );
    }
    let tags = e
        .tags
        .iter()
        .filter(|t| !t.eq_ignore_ascii_case(&e.annotation))
        .take(MAX_TAGS);
    for tag in tags {
        for t in TAG_TEMPLATES {
            push(t.replace("{tag}", tag));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "emoji,hexcode,group,subgroups,annotation,tags,openmoji_tags,openmoji_author,skintone,skintone_base_hexcode,order\n\
😀,1F600,smileys-emotion,face-smiling,grinning face,\"face, grin, happy\",\"smile, happy\",A,,,1\n\
🏃🏽,1F3C3-1F3FD,people-body,person-activity,person running: medium skin tone,\"marathon, running\",,B,3,1F3C3,2\n";

    #[test]
    fn csv_rows_tags_and_base() {
        let rows = parse_csv(CSV.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].hexcode, "1F600");
        assert_eq!(rows[0].subgroup, "face-smiling");
        assert_eq!(rows[0].tags, ["face", "grin", "happy", "smile"]);
        assert_eq!(rows[0].base_hexcode, "1F600");
        assert_eq!(rows[1].base_hexcode, "1F3C3");
        assert_eq!(rows[1].annotation, "person running: medium skin tone");
    }

    #[test]
    fn csv_without_annotation_is_an_error() {
        let bad = "emoji,hexcode,group,subgroups,annotation,tags,openmoji_tags\nx,1F600,g,s,,,\n";
        assert!(parse_csv(bad.as_bytes()).is_err());
    }

    #[test]
    fn caption_templates() {
        let rows = parse_csv(CSV.as_bytes()).unwrap();
        let c = captions(&rows[0]);
        assert_eq!(c[0], "grinning face");
        assert!(c.contains(&"an emoji of grinning face".to_owned()));
        assert!(c.contains(&"face smiling: grinning face".to_owned()));
        assert!(c.contains(&"a picture of grin".to_owned()));
        assert!(c.contains(&"an emoji about smile".to_owned()));
        assert_eq!(c.len(), 5 + 2 * 4);
        let mut sorted = c.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), c.len());
    }
}
