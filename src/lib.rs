//! omnibind: a multimodal vector search server.
//!
//! Layers, from the bottom up (dependencies only point downwards):
//! - [`embed`]: neural encoders (CLIP, ImageBind) run by candle, their preprocessing and the
//!   compute-device choice. Knows nothing of HTTP, storage or indexes.
//! - [`index`]: approximate and exact nearest-neighbour indexes over embedding vectors.
//! - [`store`]: durable storage of items, vectors and original content.
//! - [`engine`]: collections binding a model, the store and an index; uploads and searches.
//! - [`train`]: training of small ImageBind-architecture models (contrastive stages, optimiser,
//!   checkpoints) over [`embed`]; no HTTP.
//! - [`api`] and [`app`]: the HTTP API over the engine, and the server that runs it.
//! - [`web`]: the browser demo's files, embedded at build time and served by [`api`] at `/`.
//! - [`data`]: preparation of training data (`omnibind data openmoji`); no HTTP, no models.
//! - [`eval`]: cross-modal retrieval and zero-shot classification of a model over that data
//!   (`omnibind eval`); no HTTP.
//!
//! [`guard`] is a leaf that contains panics inside third-party parsers of untrusted bytes.
//!
//! The binary (`src/main.rs`) is a thin command-line front over this library.

pub mod api;
pub mod app;
pub mod bench;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod data;
pub mod embed;
pub mod engine;
pub mod eval;
pub mod guard;
pub mod index;
pub mod ingest;
pub mod store;
pub mod train;
pub mod web;
