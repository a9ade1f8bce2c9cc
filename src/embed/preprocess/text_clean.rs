//! Text clean-up before tokenisation, as each model family's reference tokenizer does it.
//!
//! OpenAI CLIP's `SimpleTokenizer`, which ImageBind and open_clip copy, cleans every text before
//! BPE: `ftfy.fix_text` (mojibake repaired, curly quotes straightened, Latin ligatures
//! expanded, full-width characters narrowed, HTML entities unescaped when the text holds no
//! `<`, terminal escapes and control characters removed, line breaks unified, NFC), then
//! Python's `html.unescape` twice, whitespace runs collapsed to one space, the ends stripped,
//! and lower-casing (Python's `str.lower`, which writes a final sigma at the end of a Greek
//! word). Hugging Face's fast CLIP tokenizer (`tokenizer.json`) does none of it: its own
//! normaliser is NFC, whitespace and a per-character lower-casing, so the CLIP checkpoints
//! served through transformers are tokenised without clean-up.
//!
//! ftfy's fixes come from `plsfix`, a port of ftfy 6 (the only Rust crate that repairs
//! mojibake); Python's `html.unescape` from `htmlize`, which implements the same HTML5
//! character-reference rules. Three differences between those crates and their Python
//! references are bridged here, each with a test:
//! - plsfix's terminal-escape pattern never matches (it is written with a C octal escape that
//!   Rust does not have), so the escapes are removed here with ftfy's pattern first;
//! - plsfix cuts segments at a byte offset and panics inside a multi-byte character of a text
//!   over 1,000,000 bytes; the segments are cut here, at line ends or after 1,000,000 characters
//!   as ftfy does, and any panic left is contained (the text is then cleaned without plsfix);
//! - Python's `html.unescape` drops numeric references to control characters and
//!   non-characters (`&#1;` gives nothing) where the HTML5 rules keep them; such references are
//!   removed before `htmlize` sees them.
//!
//! The measured agreement with the official tokenizer is in README ("Exactness") and
//! `tests/fixtures/text/`.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};

use crate::guard::contain;

/// What a model's tokenizer does to a text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextCleaning {
    /// Nothing beyond `tokenizer.json`'s own normaliser (Hugging Face's fast CLIP tokenizer).
    #[default]
    None,
    /// OpenAI CLIP's `basic_clean` and `whitespace_clean` with lower-casing (ImageBind,
    /// open_clip and the original CLIP).
    Ftfy,
}

impl TextCleaning {
    /// The text the tokenizer should see.
    pub fn apply<'a>(self, text: &'a str) -> Cow<'a, str> {
        match self {
            TextCleaning::None => Cow::Borrowed(text),
            TextCleaning::Ftfy => Cow::Owned(clean_like_openai_clip(text)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TextCleaning::None => "none",
            TextCleaning::Ftfy => "ftfy",
        }
    }
}

/// ftfy's longest segment, in characters.
const MAX_SEGMENT_CHARS: usize = 1_000_000;

/// ftfy's pattern of terminal (ANSI) escape sequences.
static TERMINAL_ESCAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("valid pattern"));

/// A numeric character reference as Python's `html.unescape` finds one (`;` optional).
static NUMERIC_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"&#(?:[xX]([0-9a-fA-F]+)|([0-9]+));?").expect("valid pattern"));

/// `whitespace_clean(basic_clean(text)).lower()` of OpenAI CLIP's `SimpleTokenizer`.
pub fn clean_like_openai_clip(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let collapsed = unescaped.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.to_lowercase()
}

/// `ftfy.fix_text` with its default configuration.
pub fn fix_text(text: &str) -> String {
    let mut config = plsfix::TextFixerConfig {
        remove_terminal_escapes: false,
        ..plsfix::TextFixerConfig::default()
    };
    let mut out = String::with_capacity(text.len());
    for segment in segments(text) {
        // ftfy stops unescaping HTML for the rest of the text once a segment holds a `<`.
        if config.unescape_html.is_none() && segment.contains('<') {
            config.unescape_html = Some(false);
        }
        let segment = TERMINAL_ESCAPE.replace_all(segment, "");
        match contain(|| plsfix::fix_and_explain(&segment, false, Some(&config)).text) {
            Ok(fixed) => out.push_str(&fixed),
            Err(panic) => {
                tracing::warn!(panic = %panic, "text clean-up failed; the segment is kept as it is");
                out.push_str(&segment);
            }
        }
    }
    out
}

/// ftfy's segments: each line with its `\n`, a line longer than [`MAX_SEGMENT_CHARS`]
/// characters cut after that many.
fn segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let end = rest[..line_end]
            .char_indices()
            .nth(MAX_SEGMENT_CHARS)
            .map_or(line_end, |(i, _)| i);
        let (segment, tail) = rest.split_at(end);
        rest = tail;
        Some(segment)
    })
}

/// Python's `html.unescape`.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let kept = NUMERIC_REFERENCE.replace_all(text, |c: &Captures| {
        let value = match (c.get(1), c.get(2)) {
            (Some(hex), _) => u32::from_str_radix(hex.as_str(), 16).ok(),
            (_, Some(dec)) => dec.as_str().parse::<u32>().ok(),
            _ => None,
        };
        if value.is_some_and(python_drops_reference) {
            String::new()
        } else {
            c[0].to_owned()
        }
    });
    htmlize::unescape(kept.as_ref()).into_owned()
}

/// Code points whose numeric references Python's `html.unescape` replaces with nothing: its
/// `_invalid_codepoints` less those its `_invalid_charrefs` table maps to a character first
/// (`&#x80;` is `€`, `&#13;` is `\r`, `&#0;` is U+FFFD).
fn python_drops_reference(cp: u32) -> bool {
    matches!(cp, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef)
        || (cp <= 0x10ffff && (cp & 0xfffe) == 0xfffe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typographic_text_is_cleaned_as_the_reference_does() {
        let cases = [
            (
                "\u{201c}Smart\u{201d} \u{2018}quotes\u{2019}",
                "\"smart\" 'quotes'",
            ),
            ("\u{fb01}nance o\u{fb03}ce", "finance office"),
            ("\u{ff21}\u{ff22}\u{ff23}\u{3000}\u{ff11}", "abc 1"),
            ("fish &amp;amp; chips", "fish & chips"),
            ("caf\u{e9} cafe\u{301}", "caf\u{e9} caf\u{e9}"),
            (
                "The Mona Lisa doesn\u{e2}\u{20ac}\u{2122}t",
                "the mona lisa doesn't",
            ),
            (
                "\u{39f}\u{394}\u{3a5}\u{3a3}\u{3a3}\u{395}\u{3a5}\u{3a3}",
                "\u{3bf}\u{3b4}\u{3c5}\u{3c3}\u{3c3}\u{3b5}\u{3c5}\u{3c2}",
            ),
            ("  tab\tand\u{a0}nbsp\r\n", "tab and nbsp"),
        ];
        for (text, want) in cases {
            assert_eq!(clean_like_openai_clip(text), want, "{text:?}");
        }
        assert_eq!(TextCleaning::None.apply("It\u{2019}s"), "It\u{2019}s");
    }

    /// plsfix's own terminal-escape pattern never matches; ftfy removes the whole sequence.
    #[test]
    fn terminal_escapes_are_removed_whole() {
        assert_eq!(
            clean_like_openai_clip("\x1b[1;32mbold green\x1b[0m plain"),
            "bold green plain"
        );
    }

    /// Python drops `&#1;`; the HTML5 rules `htmlize` follows keep U+0001.
    #[test]
    fn numeric_references_to_control_characters_give_nothing() {
        assert_eq!(html_unescape("&#1; control &#x7f;"), " control ");
        assert_eq!(html_unescape("&#128;&#13;&#65"), "\u{20ac}\rA");
        assert_eq!(html_unescape("&#xFFFF;&#x1FFFE;&#xFDD0;x"), "x");
    }

    /// plsfix cut a text over 1,000,000 bytes at a byte offset, which panicked inside a
    /// multi-byte character; segments are cut at characters here.
    #[test]
    fn long_texts_of_multibyte_characters_are_cleaned() {
        let text = "\u{201c}".repeat(400_000);
        assert!(text.len() > 1_000_000);
        assert_eq!(clean_like_openai_clip(&text), "\"".repeat(400_000));
        let lines: Vec<&str> = segments("a\nb\n\nc").collect();
        assert_eq!(lines, ["a\n", "b\n", "\n", "c"]);
        let long = "\u{e9}".repeat(MAX_SEGMENT_CHARS + 3);
        let parts: Vec<usize> = segments(&long).map(|s| s.chars().count()).collect();
        assert_eq!(parts, [MAX_SEGMENT_CHARS, 3]);
    }
}
