//! The model manifest: a TOML file beside the code that says how to feed a
//! model and how to read its outputs (docs/detection.md has the format).
//!
//! Parsing is strict (`deny_unknown_fields`, an unknown decoder kind is an
//! error) and [`Manifest::check`] rejects values no model could have, so a
//! typo fails at start with the file's name, never at the first frame.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short model name, e.g. `nanodet-g`.
    pub name: String,
    /// Version of the model (of the package it came from).
    pub version: String,
    /// The .onnx file, relative to the models directory.
    pub model: PathBuf,
    /// Licence(s) of the weights and of the conversion.
    pub licence: String,
    /// Where the weights come from and how they were converted.
    pub source: String,
    /// Detections below this score are dropped.
    pub score_threshold: f32,
    /// Class-wise NMS: of two boxes of one class overlapping more than this
    /// (intersection over union), the lower-scored one is dropped.
    pub nms_iou: f32,
    /// At most this many detections per frame (highest scores first).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// Class names, in the model's class order.
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub decoder: DecoderSpec,
}

fn default_max_detections() -> usize {
    100
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// [batch, channel, height, width]
    Nchw,
    /// [batch, height, width, channel]
    Nhwc,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColourOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scale each axis to the input size (aspect ratio not kept).
    Stretch,
    /// Keep the aspect ratio, centre the picture, fill the rest with `pad`.
    Letterbox,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the model's image input.
    pub name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    pub colour: ColourOrder,
    pub resize: Resize,
    /// Per-channel mean, in the model's colour order, on the 0-255 scale:
    /// the model sees (pixel - mean) / std.
    #[serde(default = "zero3")]
    pub mean: [f32; 3],
    #[serde(default = "one3")]
    pub std: [f32; 3],
    /// Letterbox fill (0-255 pixel value, before normalisation).
    #[serde(default = "default_pad")]
    pub pad: u8,
}

fn zero3() -> [f32; 3] {
    [0.0; 3]
}
fn one3() -> [f32; 3] {
    [1.0; 3]
}
fn default_pad() -> u8 {
    114
}

/// How to turn the model's outputs into boxes. Box coordinates of every
/// decoder end up in model-input pixels, then in [0, 1] of the original frame.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DecoderSpec {
    /// NanoDet / GFL: per stride, class scores [B, cells, classes] and box
    /// distributions [B, cells, 4 * (reg_max + 1)] (left, top, right, bottom
    /// distances in bins of one stride). Cells are row-major over the grid
    /// of input / stride; a cell's centre is (col + center_offset) * stride.
    Gfl {
        strides: Vec<u32>,
        reg_max: u32,
        /// One score output name per stride.
        scores: Vec<String>,
        /// One box-distribution output name per stride.
        boxes: Vec<String>,
        #[serde(default = "half")]
        center_offset: f32,
        /// Whether the graph already applied a sigmoid to the scores.
        #[serde(default)]
        scores_are_logits: bool,
    },
    /// TF object detection API (SSD & co): NMS is in the graph. Boxes
    /// [B, M, 4] as (ymin, xmin, ymax, xmax) in [0, 1] of the input, scores
    /// [B, M], classes [B, M] (float ids), optional count [B].
    Ssd {
        boxes: String,
        scores: String,
        classes: String,
        #[serde(default)]
        count: Option<String>,
        /// Subtracted from the class ids before looking up `labels`
        /// (the TF API's ids start at 1).
        #[serde(default)]
        class_offset: i64,
    },
    /// YOLOv8: one output [B, 4 + classes, N], rows cx, cy, w, h (input
    /// pixels) then one score per class; no objectness, NMS not in the graph.
    Yolov8 { output: String },
}

fn half() -> f32 {
    0.5
}

impl DecoderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DecoderSpec::Gfl { .. } => "gfl",
            DecoderSpec::Ssd { .. } => "ssd",
            DecoderSpec::Yolov8 { .. } => "yolov8",
        }
    }
}

/// Why a manifest was rejected (the caller adds the file name).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Manifest {
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text)?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Rejects values that no model could have.
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if self.labels.is_empty() {
            return bad("labels is empty".into());
        }
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return bad(format!(
                "score_threshold {} is not in [0, 1]",
                self.score_threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.nms_iou) {
            return bad(format!("nms_iou {} is not in [0, 1]", self.nms_iou));
        }
        if self.max_detections == 0 {
            return bad("max_detections is 0".into());
        }
        let i = &self.input;
        if i.width == 0 || i.height == 0 || i.width > 8192 || i.height > 8192 {
            return bad(format!(
                "input size {}x{} is out of range",
                i.width, i.height
            ));
        }
        if i.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return bad(format!(
                "input.std {:?} has a zero or non-finite value",
                i.std
            ));
        }
        if let DecoderSpec::Gfl {
            strides,
            reg_max,
            scores,
            boxes,
            ..
        } = &self.decoder
        {
            if strides.is_empty() {
                return bad("decoder.strides is empty".into());
            }
            if scores.len() != strides.len() || boxes.len() != strides.len() {
                return bad(format!(
                    "decoder has {} strides but {} score and {} box outputs",
                    strides.len(),
                    scores.len(),
                    boxes.len()
                ));
            }
            for &s in strides {
                if s == 0 || !i.width.is_multiple_of(s) || !i.height.is_multiple_of(s) {
                    return bad(format!(
                        "stride {s} does not divide the input size {}x{}",
                        i.width, i.height
                    ));
                }
            }
            if *reg_max == 0 || *reg_max > 64 {
                return bad(format!("decoder.reg_max {reg_max} is out of range (1-64)"));
            }
        }
        Ok(())
    }

    /// The .onnx file: `model` resolved against `models_dir`.
    pub fn model_path(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
version = "1"
model = "m/m.onnx"
licence = "MIT"
source = "test"
score_threshold = 0.4
nms_iou = 0.5
labels = ["person", "car"]

[input]
name = "images"
layout = "nchw"
width = 320
height = 320
colour = "rgb"
resize = "letterbox"
std = [255.0, 255.0, 255.0]

[decoder]
kind = "yolov8"
output = "output0"
"#;

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_manifest_parses_with_defaults() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.input.mean, [0.0; 3]);
        assert_eq!(m.input.pad, 114);
        assert_eq!(m.max_detections, 100);
        assert_eq!(
            m.decoder,
            DecoderSpec::Yolov8 {
                output: "output0".into()
            }
        );
        assert_eq!(
            m.model_path(Path::new("/models")),
            PathBuf::from("/models/m/m.onnx")
        );
    }

    #[test]
    fn the_shipped_nanodet_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-g.toml");
        let m = Manifest::from_file(&path).unwrap();
        assert_eq!(m.labels.len(), 80);
        assert_eq!(m.labels[0], "person");
        assert_eq!(m.labels[2], "car");
        assert_eq!(m.labels[5], "bus");
        assert_eq!(m.decoder.kind(), "gfl");
    }

    #[test]
    fn an_unknown_decoder_is_named() {
        let e = err(&GOOD.replace("kind = \"yolov8\"", "kind = \"yolov9\""));
        assert!(e.contains("unknown variant `yolov9`"), "{e}");
        assert!(e.contains("gfl") && e.contains("ssd"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = err(&GOOD.replace("licence = \"MIT\"", "licence = \"MIT\"\nlicense = \"MIT\""));
        assert!(e.contains("unknown field `license`"), "{e}");
        let e = err(&GOOD.replace("output = \"output0\"", "output = \"o\"\nanchors = 3"));
        assert!(e.contains("anchors"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(err(&GOOD.replace("layout = \"nchw\"", "layout = \"chw\"")).contains("chw"));
        assert!(err(&GOOD.replace("width = 320", "width = 0")).contains("0x320"));
        assert!(
            err(&GOOD.replace("score_threshold = 0.4", "score_threshold = 4.0"))
                .contains("score_threshold 4")
        );
        assert!(
            err(&GOOD.replace("labels = [\"person\", \"car\"]", "labels = []"))
                .contains("labels is empty")
        );
        assert!(
            err(&GOOD.replace("std = [255.0, 255.0, 255.0]", "std = [1.0, 0.0, 1.0]"))
                .contains("input.std")
        );
        let e = err(&GOOD.replace("name = \"images\"\n", ""));
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn gfl_strides_must_fit_the_input() {
        let gfl = GOOD.replace(
            "kind = \"yolov8\"\noutput = \"output0\"",
            "kind = \"gfl\"\nstrides = [8, 16, 32]\nreg_max = 7\nscores = [\"a\", \"b\", \"c\"]\nboxes = [\"d\", \"e\", \"f\"]",
        );
        Manifest::parse(&gfl).unwrap();
        assert!(err(&gfl.replace("[8, 16, 32]", "[8, 16, 48]")).contains("stride 48"));
        assert!(err(&gfl.replace("[\"a\", \"b\", \"c\"]", "[\"a\"]")).contains("3 strides"));
        assert!(err(&gfl.replace("reg_max = 7", "reg_max = 0")).contains("reg_max 0"));
    }
}
