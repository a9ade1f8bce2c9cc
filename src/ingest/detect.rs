//! Media detection from magic numbers. File names and client-declared types are never trusted:
//! what the bytes are decides how they are decoded and which `Content-Type` they are served with.

use crate::embed::preprocess::audio::is_mp3_frame_header;
use crate::embed::Modality;

/// What a file was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The modality, when the format implies one. NumPy arrays and TIFF files hold depth, thermal
    /// or IMU data alike, so they need an explicit modality.
    pub modality: Option<Modality>,
    /// The MIME type the bytes are served with.
    pub content_type: &'static str,
}

const fn found(modality: Option<Modality>, content_type: &'static str) -> Option<Detected> {
    Some(Detected {
        modality,
        content_type,
    })
}

/// Recognises an allow-listed format from the leading bytes; `None` for anything else.
pub fn detect(bytes: &[u8]) -> Option<Detected> {
    let b = bytes;
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return found(Some(Modality::Image), "image/jpeg");
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return found(Some(Modality::Image), "image/png");
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return found(Some(Modality::Image), "image/gif");
    }
    if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return found(Some(Modality::Image), "image/webp");
    }
    if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WAVE" {
        return found(Some(Modality::Audio), "audio/wav");
    }
    if b.starts_with(b"fLaC") {
        return found(Some(Modality::Audio), "audio/flac");
    }
    if b.starts_with(b"OggS") {
        return found(Some(Modality::Audio), "audio/ogg");
    }
    if b.starts_with(b"ID3") || is_mp3_frame_header(b) {
        return found(Some(Modality::Audio), "audio/mpeg");
    }
    if b.starts_with(b"\x93NUMPY") {
        return found(None, "application/x-npy");
    }
    if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        return found(None, "image/tiff");
    }
    if b.starts_with(b"PK\x03\x04") {
        return found(Some(Modality::Video), "application/zip");
    }
    if is_text(b) {
        return found(Some(Modality::Text), "text/plain; charset=utf-8");
    }
    None
}

/// UTF-8 without NUL or other C0 controls than tab, newline and carriage return.
fn is_text(b: &[u8]) -> bool {
    !b.is_empty()
        && std::str::from_utf8(b).is_ok()
        && !b
            .iter()
            .any(|&c| c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_formats_by_bytes() {
        assert_eq!(
            detect(&[0xFF, 0xD8, 0xFF, 0xE0]).unwrap().content_type,
            "image/jpeg"
        );
        assert_eq!(
            detect(b"\x89PNG\r\n\x1a\n....").unwrap().modality,
            Some(Modality::Image)
        );
        assert_eq!(
            detect(b"RIFF\0\0\0\0WAVEfmt ").unwrap().modality,
            Some(Modality::Audio)
        );
        assert_eq!(
            detect(b"RIFF\0\0\0\0WEBPVP8 ").unwrap().content_type,
            "image/webp"
        );
        assert_eq!(detect(b"\x93NUMPY\x01\x00").unwrap().modality, None);
        assert_eq!(
            detect("a dog on a beach\n".as_bytes()).unwrap().modality,
            Some(Modality::Text)
        );
        assert_eq!(
            detect("ünïcödé".as_bytes()).unwrap().modality,
            Some(Modality::Text)
        );
    }

    #[test]
    fn refuses_unknown_and_binary() {
        assert!(detect(b"").is_none());
        assert!(detect(b"BM\0\0binary\0").is_none());
        assert!(detect(b"<html>\0</html>").is_none());
        assert!(detect(&[0xC3, 0x28]).is_none());
        // A UTF-16 byte order mark shares MP3's sync bits; it is not MP3.
        assert!(detect(b"\xff\xfe\x00a\x00").is_none());
        assert_eq!(
            detect(&[0xFF, 0xFB, 0x90, 0x64]).unwrap().content_type,
            "audio/mpeg"
        );
    }
}
