//! The path of an upload before it reaches the store: the spool its files are received into,
//! what a file is (detected from its bytes), and the bounded queue that runs encoder work off
//! the async runtime.

pub mod detect;
pub mod queue;
pub mod spool;

pub use detect::{detect, Detected};
pub use queue::{EmbedQueue, QueueFull};
pub use spool::{Spool, SpoolFile, SpoolQuota, Written};
