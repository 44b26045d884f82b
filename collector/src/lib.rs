//! camfleet-collector: consumes camera video from Kafka and archives it as
//! GOP-aligned MPEG-TS segments (local directory or HDFS).
//!
//! `main.rs` is thin; [`app`] holds the loop. See ARCHITECTURE.md.

pub mod app;
pub mod archive;
pub mod consume;
pub mod continuity;
pub mod detect;
pub mod fanout;
pub mod http;
pub mod infer;
pub mod learn;
pub mod live;
pub mod playback;
pub mod segmenter;
pub mod service;
pub mod spill;
pub mod stats;
