//! A detection's features: what the verifier sees.
//!
//! The layout of [`verifier_input`] is versioned ([`FEATURE_LAYOUT_VERSION`]);
//! change it only together with that number (models trained on another
//! layout are refused at load).

/// Bumped whenever [`verifier_input`] changes what it produces.
pub const FEATURE_LAYOUT_VERSION: u32 = 1;

/// Stable identity of one detected object, the handle ops use to label it
/// (`camfleet-collector label DETECTION_ID true|false`):
/// `<site>/<camera>:<epoch>:<seq>:<index in the picture's objects>`.
pub fn detection_id(camera: &str, epoch: u64, seq: u64, index: usize) -> String {
    format!("{camera}:{epoch}:{seq}:{index}")
}

/// Everything the verifier may use about one detection.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionFeatures {
    pub detection_id: String,
    /// `site/camera`.
    pub camera: String,
    /// Capture time of the picture, µs since the Unix epoch (UTC).
    pub capture_us: i64,
    /// Detector class id (COCO index for the default detector).
    pub class_id: u32,
    /// Detector score, 0..1.
    pub score: f32,
    /// Box, normalised to the picture (0..1).
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
    /// Embedding of the box's crop from the backbone (fixed length per
    /// backbone; the model manifest records it).
    pub embedding: Vec<f32>,
}

/// Where a label came from. Ops' labels always win over automatic ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelSource {
    /// `camfleet-collector label DETECTION_ID true|false` or the page.
    Ops,
    /// The stillness rule: same box for hours, unless ops said true.
    Stillness,
}

/// One training example: a detection, whether it is real, and why we think so.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledDetection {
    pub features: DetectionFeatures,
    pub real: bool,
    pub source: LabelSource,
}

/// The verifier's input row for one detection:
/// `[score, centre_x, centre_y, width, height, sin(day), cos(day),
/// one-hot(class_id < num_classes)..., embedding...]`, where `day` is the UTC
/// time of day as an angle. Length: `7 + num_classes + embedding.len()`.
pub fn verifier_input(f: &DetectionFeatures, num_classes: usize) -> Vec<f32> {
    const DAY_US: i64 = 86_400_000_000;
    let angle = (f.capture_us.rem_euclid(DAY_US) as f64 / DAY_US as f64) * std::f64::consts::TAU;
    let mut row = Vec::with_capacity(7 + num_classes + f.embedding.len());
    row.extend_from_slice(&[
        f.score,
        (f.x_min + f.x_max) / 2.0,
        (f.y_min + f.y_max) / 2.0,
        f.x_max - f.x_min,
        f.y_max - f.y_min,
        angle.sin() as f32,
        angle.cos() as f32,
    ]);
    row.extend((0..num_classes).map(|c| if c as u32 == f.class_id { 1.0 } else { 0.0 }));
    row.extend_from_slice(&f.embedding);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_row_layout() {
        let f = DetectionFeatures {
            detection_id: detection_id("s/c", 1, 2, 0),
            camera: "s/c".into(),
            capture_us: 6 * 3_600_000_000, // 06:00 UTC: a quarter of the day
            class_id: 1,
            score: 0.5,
            x_min: 0.25,
            y_min: 0.5,
            x_max: 0.75,
            y_max: 1.0,
            embedding: vec![9.0, 8.0],
        };
        assert_eq!(f.detection_id, "s/c:1:2:0");
        let row = verifier_input(&f, 3);
        assert_eq!(row.len(), 7 + 3 + 2);
        assert_eq!(&row[..5], &[0.5, 0.5, 0.75, 0.5, 0.5]);
        assert!((row[5] - 1.0).abs() < 1e-6 && row[6].abs() < 1e-6);
        assert_eq!(&row[7..], &[0.0, 1.0, 0.0, 9.0, 8.0]);
    }
}
