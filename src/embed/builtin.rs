//! Models embedded in the binary at build time, named `builtin:NAME` in configuration.
//!
//! The bundled default model (`models/default/`, about 28 MB) is compiled in with the
//! `builtin-model` feature (on by default), so an installed binary serves it from any directory
//! with no files beside it. A build without the feature carries no model and says so when one
//! is asked for.

use super::EmbedError;

/// The prefix that names an embedded model in a model reference.
pub const PREFIX: &str = "builtin:";

/// The name of the bundled default model.
pub const DEFAULT_NAME: &str = "default";

/// The files of an embedded model.
#[derive(Debug)]
pub struct BuiltinModel {
    /// The name after `builtin:`.
    pub name: &'static str,
    /// `config.json`.
    pub config_json: &'static str,
    /// `tokenizer.json`.
    pub tokenizer_json: &'static [u8],
    /// `model.safetensors`.
    pub weights: &'static [u8],
    /// The licence its model card declares.
    pub license: &'static str,
}

impl BuiltinModel {
    /// `builtin:NAME`, as configuration names it.
    pub fn reference(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

#[cfg(feature = "builtin-model")]
static DEFAULT: BuiltinModel = BuiltinModel {
    name: DEFAULT_NAME,
    config_json: include_str!("../../models/default/config.json"),
    tokenizer_json: include_bytes!("../../models/default/tokenizer.json"),
    weights: include_bytes!("../../models/default/model.safetensors"),
    license: "CC-BY-SA-4.0",
};

#[cfg(feature = "builtin-model")]
static ALL: [&BuiltinModel; 1] = [&DEFAULT];
#[cfg(not(feature = "builtin-model"))]
static ALL: [&BuiltinModel; 0] = [];

/// Every model this build carries.
pub fn all() -> &'static [&'static BuiltinModel] {
    &ALL
}

/// The embedded model called `name` (the part after `builtin:`).
pub fn get(name: &str) -> Result<&'static BuiltinModel, EmbedError> {
    if let Some(model) = all().iter().find(|m| m.name == name) {
        return Ok(model);
    }
    let carried: Vec<String> = all().iter().map(|m| m.reference()).collect();
    Err(EmbedError::ModelNotFound(if carried.is_empty() {
        format!(
            "`{PREFIX}{name}`: this build carries no built-in model (it was built without the \
             `builtin-model` feature); name a model directory or a Hugging Face id instead"
        )
    } else {
        format!(
            "`{PREFIX}{name}` is not a built-in model; this build carries {}",
            carried.join(", ")
        )
    }))
}

#[cfg(all(test, feature = "builtin-model"))]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_the_committed_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let m = get(DEFAULT_NAME).unwrap();
        assert_eq!(m.reference(), "builtin:default");
        assert_eq!(
            m.weights,
            &std::fs::read(dir.join("model.safetensors")).unwrap()[..]
        );
        // The licence stated here is the one the model card declares.
        assert_eq!(
            crate::embed::registry::card_license(&dir).as_deref(),
            Some(m.license)
        );
    }

    #[test]
    fn unknown_names_list_what_is_carried() {
        let e = get("nope").unwrap_err().to_string();
        assert!(
            e.contains("`builtin:nope` is not a built-in model") && e.contains("builtin:default"),
            "{e}"
        );
    }
}
