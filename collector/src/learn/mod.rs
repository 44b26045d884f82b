//! On-premises learning (issue 11): a detection verifier per camera (or
//! site) and a scene model per camera, trained from the archive's Parquet
//! tables and ops' labels, kept in a versioned registry on the archive's
//! filesystem and hot-swapped into every collector instance.
//!
//! This module holds the contract between the two halves:
//! * the data side ([`features`]): what a detection's features are and how
//!   they become the verifier's input row, written as Parquet next to the
//!   archive index and computed live by the inference processor;
//! * the model side ([`model`]): what a trained verifier or scene model
//!   answers, and where the inference processor gets the ones in force.
//!
//! Architecture Invariant: training and live scoring build the verifier's
//! input with the same function, [`features::verifier_input`]; a model
//! records the feature layout version it was trained on and is refused by a
//! collector that builds a different one.

pub mod dataset;
pub mod embed;
pub mod features;
pub mod label;
pub mod model;
pub mod record;
pub mod scene;
pub mod schedule;
pub mod stillness;
pub mod table_writer;
pub mod tables;

// The model side: training, ONNX writing, the registry, shadow evaluation
// and hot swap (docs/learning.md).
pub mod cli;
pub mod evaluate;
pub mod manifest;
pub mod onnx;
pub mod registry;
pub mod runtime;
pub mod source;
pub mod synthetic;
pub mod table;
pub mod train;
pub mod trainer;
