//! camfleet-agent: capture -> H.264 -> Kafka, on the edge box.
//!
//! `main.rs` is thin; [`app::run`] runs a [`camera::Camera`] pipeline per camera. See ARCHITECTURE.md.

pub mod app;
pub mod camera;
pub mod encode;
pub mod fleet;
pub mod openh264_encoder;
pub mod scale;
pub mod sequence;
pub mod service;
pub mod sink;
pub mod source;
pub mod spool;
pub mod stats;
