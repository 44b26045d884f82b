//! The feature record the inference processor publishes on
//! `camfleet.features.v1` (one per inferred picture when
//! `[inference.embedding]` is on): every object's features with its
//! embedding, and a whole-frame embedding on sampled pictures. It is the
//! log the Parquet tables are written from (`learn::tables`), so a record
//! acknowledged by Kafka is never lost, whatever crashes (docs/learning.md).

use super::features::DetectionFeatures;
use serde::{Deserialize, Serialize};

pub const FEATURES_SCHEMA: &str = "camfleet.features.v1";

/// A verifier's verdict on one detection (also in `camfleet.detections.v1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub version: String,
    /// Probability that the detection is real.
    pub probability: f32,
    /// Below the verifier's threshold: flagged, still published and recorded.
    pub rejected: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelName {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureObject {
    /// `learn::features::detection_id`.
    pub id: String,
    pub class_id: u32,
    pub label: String,
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]`, normalised to the picture.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<Verdict>,
    /// The verdict of the candidate in shadow (docs/learning.md "Live
    /// shadow"): recorded only, never flags the detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Verdict>,
    pub embedding: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    pub schema: String,
    /// `site/camera`.
    pub camera: String,
    pub epoch: u64,
    pub seq: u64,
    /// Capture time, µs since the Unix epoch (UTC).
    pub capture_us: i64,
    /// The detector.
    pub model: ModelName,
    /// The embedding backbone.
    pub backbone: ModelName,
    pub objects: Vec<FeatureObject>,
    /// Whole-picture embedding (the scene model's input), on sampled pictures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_embedding: Option<Vec<f32>>,
}

impl FeatureRecord {
    /// The object's features as the verifier and the trainer see them.
    pub fn features(&self, object: &FeatureObject) -> DetectionFeatures {
        DetectionFeatures {
            detection_id: object.id.clone(),
            camera: self.camera.clone(),
            capture_us: self.capture_us,
            class_id: object.class_id,
            score: object.score,
            x_min: object.bbox[0],
            y_min: object.bbox[1],
            x_max: object.bbox[2],
            y_max: object.bbox[3],
            embedding: object.embedding.clone(),
        }
    }
}

pub const LABELS_SCHEMA: &str = "camfleet.labels.v1";

/// An ops label on `camfleet.labels.v1` (key = camera), written by
/// `camfleet-collector label` and filed by the table writer into the
/// labels table of the detection's hour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    pub schema: String,
    pub detection_id: String,
    pub camera: String,
    /// Capture time of the labelled detection (its hour), µs since the epoch.
    pub capture_us: i64,
    pub real: bool,
    pub labelled_at_us: i64,
}
