//! Decoding and preprocessing of raw inputs, one file per modality. Each function here turns
//! user bytes or text into exactly the tensor layout the reference implementation feeds its model.

pub mod audio;
pub mod depth;
pub mod image;
pub mod imu;
pub mod map;
pub mod npy;
pub mod text;
pub mod thermal;
pub mod video;

/// Version of the preprocessing pipelines. Stored with every vector, so that a change of
/// preprocessing (which silently changes embeddings) can be detected in stored data.
pub const PREPROCESS_VERSION: u32 = 1;
