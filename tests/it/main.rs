//! Integration tests, compiled into one binary.

mod abuse;
mod auth;
mod clip;
mod common;
mod crash;
mod data;
mod default_model;
mod fuzz_replay;
mod imagebind;
mod imagebind_audio_formats;
mod imagebind_server;
mod imagebind_video;
mod install;
mod server;
mod spool;
mod web;
