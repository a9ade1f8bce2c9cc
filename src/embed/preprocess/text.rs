//! Text tokenisation for CLIP-style text towers.
//!
//! Uses the model directory's `tokenizer.json` (Hugging Face `tokenizers` format). For CLIP that
//! file encodes the reference pipeline: NFC normalisation, whitespace runs collapsed to one
//! space, lower-casing, the CLIP pre-tokenisation regex, byte-level BPE with `</w>` word ends,
//! and `<|startoftext|>` ... `<|endoftext|>` around the ids. Texts are truncated to the model's
//! context (77 tokens) with the end-of-text token kept last, as the reference does.
//!
//! A model whose reference tokenizer cleans texts first (ImageBind, open_clip, OpenAI's CLIP)
//! sets [`TextCleaning::Ftfy`]: every text goes through [`super::text_clean`] before
//! `tokenizer.json`.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use super::text_clean::TextCleaning;
use crate::embed::EmbedError;

/// CLIP's end-of-text token.
pub const CLIP_EOS: &str = "<|endoftext|>";

/// Bytes of a long text encoded first per token of context (see [`TextTokenizer::encode`]).
const PREFIX_BYTES_PER_TOKEN: usize = 16;

/// The longest prefix of `text`, at most `max_bytes` long, that is followed by a whitespace
/// character; `None` when no whitespace starts within the first `max_bytes` bytes.
pub fn prefix_before_whitespace(text: &str, max_bytes: usize) -> Option<&str> {
    text.char_indices()
        .take_while(|&(i, _)| i <= max_bytes)
        .filter(|&(_, c)| c.is_whitespace())
        .last()
        .map(|(i, _)| &text[..i])
}

/// A tokenizer with the truncation and pooling conventions of a CLIP text tower.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    eos_id: Option<u32>,
    pad_id: u32,
    cleaning: TextCleaning,
}

/// Token ids of a batch, padded to the longest row, with each row's end-of-text position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub rows: usize,
    pub seq_len: usize,
    pub eos_positions: Vec<usize>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and truncates to `max_len` tokens (special tokens included).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, EmbedError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::with_tokenizer(inner, max_len)
    }

    /// The same from the bytes of a `tokenizer.json` (a model embedded in the binary).
    pub fn from_bytes(json: &[u8], max_len: usize) -> Result<Self, EmbedError> {
        let inner = Tokenizer::from_bytes(json)
            .map_err(|e| EmbedError::Tokenizer(format!("tokenizer.json: {e}")))?;
        Self::with_tokenizer(inner, max_len)
    }

    fn with_tokenizer(mut inner: Tokenizer, max_len: usize) -> Result<Self, EmbedError> {
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        let eos_id = inner.token_to_id(CLIP_EOS);
        Ok(Self {
            inner,
            max_len,
            eos_id,
            pad_id: eos_id.unwrap_or(0),
            cleaning: TextCleaning::None,
        })
    }

    /// The same tokenizer, cleaning every text first as `cleaning` says.
    pub fn with_cleaning(mut self, cleaning: TextCleaning) -> Self {
        self.cleaning = cleaning;
        self
    }

    pub fn cleaning(&self) -> TextCleaning {
        self.cleaning
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id that fills rows shorter than a batch's longest.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one text, start and end tokens included.
    ///
    /// Only the first `max_len` tokens are kept, so a long text is not tokenised in full (a
    /// 1 MB text is hundreds of thousands of tokens, each with offsets and strings, for a
    /// 77-token answer): prefixes cut just before a whitespace character are encoded, doubling
    /// in length, until one gives more tokens than fit. Pre-tokenisation splits at whitespace,
    /// so such a prefix's tokens are the first tokens of the whole text, and its truncated ids
    /// are the whole text's. The clean-up, when the model has one, is applied to each prefix: it
    /// changes text within lines and never across whitespace, so a cleaned prefix's tokens are
    /// the cleaned text's too.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let mut budget = self.max_len.max(1) * PREFIX_BYTES_PER_TOKEN;
        while budget < text.len() {
            if let Some(prefix) = prefix_before_whitespace(text, budget) {
                let enc = self.encode_raw(prefix)?;
                if !enc.get_overflowing().is_empty() {
                    return Ok(enc.get_ids().to_vec());
                }
            }
            budget = budget.saturating_mul(2);
        }
        Ok(self.encode_raw(text)?.get_ids().to_vec())
    }

    fn encode_raw(&self, text: &str) -> Result<tokenizers::Encoding, EmbedError> {
        self.inner
            .encode(self.cleaning.apply(text).as_ref(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Position the text tower pools at: the first end-of-text token, or (for tokenizers without
    /// one) the largest id, which is how the reference finds it in legacy configurations.
    pub fn pool_position(&self, ids: &[u32]) -> usize {
        self.eos_id
            .and_then(|eos| ids.iter().position(|&t| t == eos))
            .unwrap_or_else(|| {
                ids.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
                    .map_or(0, |(i, _)| i)
            })
    }

    /// Tokenises a batch and pads it to its longest row with the end-of-text id. Padding after
    /// the end-of-text token cannot change the pooled state: the text tower is causal.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch, EmbedError> {
        let rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<_, _>>()?;
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let eos_positions = rows.iter().map(|r| self.pool_position(r)).collect();
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        for r in &rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(self.pad_id, seq_len - r.len()));
        }
        Ok(TokenBatch {
            ids,
            rows: rows.len(),
            seq_len,
            eos_positions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip_tokenizer() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/clip/tokenizer/tokenizer.json");
        TextTokenizer::from_file(&path, 77).unwrap()
    }

    #[test]
    fn prefixes_end_before_whitespace() {
        assert_eq!(prefix_before_whitespace("ab cd ef", 4), Some("ab"));
        assert_eq!(prefix_before_whitespace("ab cd ef", 5), Some("ab cd"));
        assert_eq!(prefix_before_whitespace("abcdef", 3), None);
        assert_eq!(prefix_before_whitespace(" abc", 3), Some(""));
        // Multi-byte characters and Unicode whitespace.
        assert_eq!(prefix_before_whitespace("é\u{3000}ü x", 3), Some("é"));
        assert_eq!(prefix_before_whitespace("éé\u{a0}x", 100), Some("éé"));
    }

    /// Encoding long texts by prefixes gives exactly the ids of encoding them in full.
    #[test]
    fn long_texts_encode_as_in_full() {
        let tok = clip_tokenizer();
        let ftfy = clip_tokenizer().with_cleaning(TextCleaning::Ftfy);
        let word_salad: String = (0..5000)
            .map(|i| format!("w{}ord{} ", i % 97, "x".repeat(i % 13)))
            .collect();
        let texts = [
            "a photo of a dog".to_owned(),
            "lorem ipsum dolor sit amet ".repeat(2000),
            word_salad,
            // Long runs without whitespace, whitespace runs, punctuation and other scripts.
            format!("{} tail words here", "x".repeat(5000)),
            format!("{}start {}", " ".repeat(4000), "y ".repeat(200)),
            "naïve café, déjà vu! 東京 タワー 123,456 ".repeat(300),
            "tokens,with,commas,and;semicolons ".repeat(400),
            // Just around the point where the first prefix overflows.
            "ab ".repeat(74),
            "ab ".repeat(75),
            "ab ".repeat(76),
            "ab ".repeat(500),
        ]
        .into_iter()
        // Word lengths that put the first prefix's token count on both sides of the context.
        .chain((1..40).map(|n| format!("{}{} ", "q".repeat(n), n % 10).repeat(3000 / (n + 2))))
        // Texts the clean-up changes: entities, curly quotes, ligatures, mojibake, controls.
        .chain([
            "fish &amp;amp; chips \u{201c}quoted\u{201d} \u{fb01}ne ".repeat(300),
            "caf\u{c3}\u{a9} doesn\u{e2}\u{20ac}\u{2122}t \x1b[31mred\x1b[0m\r\n".repeat(300),
            format!("{}&amp; {}", "&lt;".repeat(3000), "\u{ff21} ".repeat(500)),
        ]);
        for text in texts {
            for tok in [&tok, &ftfy] {
                let full = tok.encode_raw(&text).unwrap().get_ids().to_vec();
                assert_eq!(
                    tok.encode(&text).unwrap(),
                    full,
                    "{:?} {:?}",
                    tok.cleaning(),
                    &text[..text.floor_char_boundary(40)]
                );
                assert!(full.len() <= 77);
            }
        }
    }

    /// A string of the committed corpus whose ids differ from the reference's, and why.
    const KNOWN_DIFFERENCES: &[(usize, &str)] = &[];

    /// The committed corpus (`tests/fixtures/text/make_corpus.py`): with the `ftfy` clean-up,
    /// every string gets the ids of ImageBind's official tokenizer with ftfy, except those in
    /// [`KNOWN_DIFFERENCES`]; without it, the ids of Hugging Face's fast tokenizer.
    #[test]
    fn corpus_ids_equal_the_reference_tokenizers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/corpus.json");
        let corpus: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let strings = corpus["strings"].as_array().unwrap();
        assert!(strings.len() >= 300, "{}", strings.len());
        let plain = clip_tokenizer();
        let ftfy = clip_tokenizer().with_cleaning(TextCleaning::Ftfy);
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let mut differ = Vec::new();
        for (i, s) in strings.iter().enumerate() {
            let text = s["text"].as_str().unwrap();
            assert_eq!(
                plain.encode(text).unwrap(),
                ids(&s["hf_fast_ids"]),
                "{i}: {text:?}"
            );
            if ftfy.encode(text).unwrap() != ids(&s["official_ids"]) {
                differ.push(i);
                eprintln!(
                    "{i} [{}] {text:?}: cleaned {:?}, reference {:?}",
                    s["category"],
                    TextCleaning::Ftfy.apply(text),
                    s["official_clean"]
                );
            }
        }
        let known: Vec<usize> = KNOWN_DIFFERENCES.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            differ, known,
            "strings whose ids differ from the official tokenizer's"
        );
    }
}
