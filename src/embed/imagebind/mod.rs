//! ImageBind: one embedding space for images and videos, text, audio, depth, thermal and IMU.
//!
//! - Paper: Girdhar et al. 2023, "ImageBind: One Embedding Space To Bind Them All",
//!   <https://arxiv.org/abs/2305.05665>
//! - Checkpoint: `imagebind_huge.pth` (the state dict of the official `imagebind_huge`), licensed
//!   CC BY-NC-SA 4.0 (non-commercial).
//! - Reference code: facebookresearch/ImageBind, `models/imagebind_model.py`,
//!   `models/multimodal_preprocessors.py`, `models/transformer.py`, `data.py`.
//!
//! [`config`] holds the sizes (the official `imagebind_huge` is [`ImageBindConfig::huge`]),
//! [`model`] the towers under the official key names. tests/it/imagebind.rs checks every tower
//! against outputs of the official code on committed random-weight checkpoints.

pub mod config;
pub mod convert;
pub mod encoder;
pub mod model;

pub use config::{ImageBindConfig, InputConfig, TrunkConfig};
pub use encoder::ImageBindEncoder;
pub use model::{ImageBindModel, Tower, TowerModel};

/// Licence of the official ImageBind weights.
pub const IMAGEBIND_LICENSE: &str = "CC-BY-NC-SA-4.0";
