//! Neural encoders that map inputs of every modality into a shared embedding space.
