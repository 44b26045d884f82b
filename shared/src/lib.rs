//! camfleet's shared vocabulary: the Kafka video record format ([`wire`]), the
//! typed and validated configuration of both binaries ([`config`]), the fleet's
//! desired-config documents ([`fleet`]) and the
//! [`clock`] seam.
//!
//! Architecture Invariant: this crate does no I/O. It parses and produces bytes
//! and strings; reading files, sockets and Kafka belongs to the binaries.

pub mod camera;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod wire;

pub use camera::CameraId;
