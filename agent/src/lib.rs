//! camfleet-agent: capture -> H.264 -> Kafka, on the edge box.
//!
//! `main.rs` is thin; [`app::run`] wires the stages. See ARCHITECTURE.md.

pub mod app;
pub mod encode;
pub mod sequence;
pub mod sink;
pub mod source;
pub mod spool;
pub mod stats;
