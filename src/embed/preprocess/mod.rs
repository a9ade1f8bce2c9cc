//! Decoding and preprocessing of raw inputs, one file per modality. Each function here turns
//! user bytes or text into exactly the tensor layout the reference implementation feeds its model.

pub mod audio;
pub mod depth;
pub mod image;
pub mod imu;
pub mod jpeg;
pub mod map;
pub mod npy;
pub mod text;
pub mod text_clean;
pub mod thermal;
pub mod video;

use super::EmbedError;

/// The error for an upload on which a third-party decoder panicked ([`crate::guard`]): the file
/// is malformed in a way the decoder does not report by itself. `what` names the data
/// (`image/jpeg`, `depth PNG`, ...). The panic's text names the library's internals, so it is
/// logged rather than sent to the client.
pub(crate) fn decoder_panicked(what: &str, panic: &str) -> EmbedError {
    tracing::warn!(
        what,
        panic,
        "a decoder panicked on an upload; answered as malformed data"
    );
    EmbedError::Decode(format!(
        "malformed {what} data: the decoder could not read it"
    ))
}

/// Version of the preprocessing pipelines. Stored with every vector, so that a change of
/// preprocessing (which silently changes embeddings) can be detected in stored data.
pub const PREPROCESS_VERSION: u32 = 1;
