//! Object detection on the consumed video (a `crate::fanout` processor).

pub mod decode;
pub mod processor;
pub mod record;
pub mod state;
