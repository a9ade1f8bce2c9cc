//! Text tokenisation for CLIP-style text towers.
//!
//! Uses the model directory's `tokenizer.json` (Hugging Face `tokenizers` format). For CLIP that
//! file encodes the reference pipeline: NFC normalisation, whitespace runs collapsed to one
//! space, lower-casing, the CLIP pre-tokenisation regex, byte-level BPE with `</w>` word ends,
//! and `<|startoftext|>` ... `<|endoftext|>` around the ids. Texts are truncated to the model's
//! context (77 tokens) with the end-of-text token kept last, as the reference does.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::embed::EmbedError;

/// CLIP's end-of-text token.
pub const CLIP_EOS: &str = "<|endoftext|>";

/// A tokenizer with the truncation and pooling conventions of a CLIP text tower.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    eos_id: Option<u32>,
    pad_id: u32,
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
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", path.display())))?;
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
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of one text, start and end tokens included.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
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
