//! The records the inference processor publishes: one detection record per
//! inferred picture on `camfleet.detections.v1` (schema:
//! docs/detections.schema.json), events on `camfleet.events.v1`
//! (docs/events.md). Both JSON, key = camera id.

use super::state::Event;
use serde::Serialize;

pub const DETECTIONS_SCHEMA: &str = "camfleet.detections.v1";
pub const EVENTS_SCHEMA: &str = "camfleet.events.v1";

#[derive(Debug, Serialize)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

#[derive(Debug, Serialize)]
pub struct BoxNorm {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

#[derive(Debug, Serialize)]
pub struct Object<'a> {
    /// `learn::features::detection_id`: the handle ops label it with.
    pub id: String,
    pub label: &'a str,
    pub class_id: usize,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BoxNorm,
    /// The verifier's verdict, when one is in force for the camera.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<crate::learn::record::Verdict>,
    /// The verdict of the candidate in shadow, when there is one: recorded
    /// for the live gate, it never flags the detection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::learn::record::Verdict>,
}

#[derive(Debug, Serialize)]
pub struct DetectionRecord<'a> {
    pub schema: &'static str,
    pub camera: &'a str,
    pub seq: u64,
    pub epoch: u64,
    pub capture_us: u64,
    pub pts_90k: u64,
    pub width: u32,
    pub height: u32,
    pub model: ModelRef<'a>,
    pub objects: Vec<Object<'a>>,
    /// Objects per label on this picture.
    pub counts: std::collections::BTreeMap<&'a str, u32>,
    /// Time in the detector (preprocess + ONNX Runtime + decode), ms.
    pub inference_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct EventRecord<'a> {
    pub schema: &'static str,
    pub camera: &'a str,
    pub epoch: u64,
    #[serde(flatten)]
    pub event: &'a Event,
}
