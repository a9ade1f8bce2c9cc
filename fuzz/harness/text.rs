//! Texts before tokenisation: the clean-up of the models whose reference tokenizer runs ftfy
//! (mojibake repair, HTML entities, terminal escapes, control characters, lower-casing), then
//! the CLIP tokenizer. Any text must give token ids, never a panic.

use std::sync::OnceLock;

use omnibind::embed::preprocess::text::{TextCleaning, TextTokenizer};

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let file = "tests/fixtures/clip/tokenizer/tokenizer.json";
        // The fuzz crate sits in fuzz/; the replay in the test suite is built from the root.
        let path = [root.join("..").join(file), root.join(file)]
            .into_iter()
            .find(|p| p.is_file())
            .expect("the CLIP tokenizer fixture");
        TextTokenizer::from_file(&path, 77)
            .unwrap()
            .with_cleaning(TextCleaning::Ftfy)
    })
}

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let cleaned = TextCleaning::Ftfy.apply(&text);
    assert!(
        cleaned.len() <= 4 * text.len() + 16,
        "{} -> {}",
        text.len(),
        cleaned.len()
    );
    let ids = tokenizer().encode(&text).unwrap();
    assert!((2..=77).contains(&ids.len()), "{ids:?}");
}
