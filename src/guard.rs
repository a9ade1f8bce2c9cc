//! Containment of panics inside third-party parsers of untrusted bytes.
//!
//! The image, audio, ZIP, `.npy` and index-dump parsers the server relies on are fuzzed upstream, yet still
//! reach `assert!`s and slice indexing on some malformed inputs (a progressive JPEG whose scans
//! disagree with its frame header makes the JPEG decoder's upsampler assert, for one). Each such
//! parser runs under [`contain`], so that a hostile upload becomes an error for that input
//! rather than a `500` for the whole request. Only the call into the third-party crate is
//! wrapped (for audio, the demuxing and decoding loop, which interleaves symphonia's calls with
//! omnibind's checks): a panic elsewhere in omnibind's own code is still a bug and still
//! propagates.
//!
//! `contain` cannot help if the crate is built with `panic = "abort"` (omnibind is not).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, returning the message of a panic inside it as the error.
///
/// `f` must own or borrow only values that a panic half-way cannot leave inconsistent for the
/// caller (the parser's own state, dropped with it): that is why the closure is asserted
/// unwind-safe here rather than by every caller.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(contain(|| 7), Ok(7));
        assert_eq!(
            contain(|| -> u8 { panic!("bad {}", "frame") }),
            Err("bad frame".to_owned())
        );
        let v: Vec<u8> = Vec::new();
        let r = contain(|| v[3]);
        assert!(r.unwrap_err().contains("index out of bounds"));
    }
}
