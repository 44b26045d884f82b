//! Precision/recall of the default detector alone vs detector + verifier on
//! the test clip (docs/benchmarks.md "learn"): the learning clip
//! (`camfleet_tests::learning_clip`: a still poster of a person, a man
//! walking across) through the real detector (NanoDet-g) and backbone
//! (SSDLite MobileNetV2) on ONNX Runtime, in process (no Kafka: what is
//! measured is the models, not the transport).
//!
//! Ground truth, from the clip's known geometry: a detection is **real**
//! when it is a person whose box overlaps the walker's box at its capture
//! time with IoU >= 0.3; every other detection (the poster, anything else)
//! is **false**.
//!
//! Training labels are what a site would have: the stillness rule (the
//! collector's defaults scaled to the clip: IoU 0.7, still for 3 s, gap
//! 2 s) marks hard negatives, and "ops" mark every other walker detection
//! real, both only in the first `train_s` seconds. The verifier is trained
//! there exactly as `train` does (`train::train_verifier`, target recall
//! 0.98) and measured on every detection after `train_s`, where the walker
//! is further right than anything it was trained on.

use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_collector::detect::{Detector, DetectorOptions};
use camfleet_collector::learn::embed::Embedder;
use camfleet_collector::learn::evaluate::OperatingPoint;
use camfleet_collector::learn::features::{DetectionFeatures, LabelSource, LabelledDetection};
use camfleet_collector::learn::stillness::{still_labels, StillnessRule};
use camfleet_collector::learn::tables::DetectionRow;
use camfleet_collector::learn::train;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub struct Args {
    /// Registry photos (`$CAMFLEET_PHOTOS`): the clip is composed from them.
    pub photos: PathBuf,
    pub detector: PathBuf,
    pub backbone: PathBuf,
    /// `$CAMFLEET_MODELS`.
    pub models: PathBuf,
    pub work: PathBuf,
}

const CAMERA: &str = "bench/clip";
const NUM_CLASSES: usize = 80;
/// Clip length; the walker crosses 300 of the 640 pixels in it.
const SCENE_S: u32 = 12;
/// Labels exist for the first 8 s; the last 4 s are measured.
const TRAIN_S: f64 = 8.0;
/// Pictures inferred per second (the collector's `infer_fps` in the tests).
const INFER_FPS: u32 = 5;
const IOU_REAL: f32 = 0.3;

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter).max(f32::EPSILON)
}

/// The clip's I420 pictures, decoded by ffmpeg.
fn decode(y4m: &Path, width: u32, height: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(y4m)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .context("ffmpeg")?;
    if !out.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    }
    let len = (width * height * 3 / 2) as usize;
    Ok(out.stdout.chunks_exact(len).map(<[u8]>::to_vec).collect())
}

pub fn run(args: &Args, results: Option<&Path>) -> anyhow::Result<()> {
    let y4m = args.work.join("learning-clip.y4m");
    let clip = camfleet_tests::learning_clip::build(&args.photos, SCENE_S, 1, &y4m);
    let pictures = decode(&y4m, clip.width, clip.height)?;
    std::fs::remove_file(&y4m).ok();
    let mut detector = Detector::load(&args.detector, &args.models, &DetectorOptions::default())?;
    let mut embedder = Embedder::load(&args.backbone, &args.models, None)?;

    // Detect and embed every inferred picture of the scene section.
    let started = Instant::now();
    let step = (clip.fps / INFER_FPS).max(1) as usize;
    let mut rows: Vec<DetectionRow> = Vec::new();
    let mut truth: HashMap<String, bool> = HashMap::new();
    for (seq, picture) in pictures
        .iter()
        .enumerate()
        .take(clip.scene_frames as usize)
        .step_by(step)
    {
        let t = seq as f64 / clip.fps as f64;
        let capture_us = (t * 1e6) as i64;
        let detections = detector
            .detect_i420(&[(clip.width, clip.height, picture)])?
            .pop()
            .unwrap_or_default();
        let boxes: Vec<[f32; 4]> = detections.iter().map(|d| d.bbox).collect();
        let embeddings = embedder.embed_boxes(clip.width, clip.height, picture, &boxes)?;
        let x0 = clip.walker_x0 + clip.walker_speed * t;
        let walker = [
            x0 as f32,
            clip.walker_y[0] as f32,
            (x0 + clip.walker_w) as f32,
            clip.walker_y[1] as f32,
        ];
        for (i, (d, embedding)) in detections.iter().zip(embeddings).enumerate() {
            let id = camfleet_collector::learn::features::detection_id(CAMERA, 1, seq as u64, i);
            truth.insert(
                id.clone(),
                d.label == "person" && iou(d.bbox, walker) >= IOU_REAL,
            );
            rows.push(DetectionRow {
                detection_id: id,
                camera: CAMERA.into(),
                capture_us,
                epoch: 1,
                seq: seq as u64,
                class_id: d.class_id as u32,
                label: d.label.clone(),
                score: d.score,
                bbox: d.bbox,
                model_name: detector.manifest().name.clone(),
                model_version: detector.manifest().version.clone(),
                verifier: None,
                backbone: embedder.manifest().name.clone(),
                embedding,
                shadow: None,
            });
        }
    }
    let infer_s = started.elapsed().as_secs_f64();
    let train_us = (TRAIN_S * 1e6) as i64;

    // Training labels: stillness (hard negatives) and every other walker
    // detection marked real by "ops", both before train_s only.
    let rule = StillnessRule {
        iou_min: 0.7,
        min_still_us: 3_000_000,
        max_gap_us: 2_000_000,
    };
    let clock = camfleet_shared::clock::SystemClock;
    let early: Vec<DetectionRow> = rows
        .iter()
        .filter(|r| r.capture_us < train_us)
        .cloned()
        .collect();
    let mut labels: HashMap<String, (bool, LabelSource)> = still_labels(&early, rule, &clock)
        .into_iter()
        .map(|l| (l.detection_id, (false, LabelSource::Stillness)))
        .collect();
    let walker_ids: Vec<&String> = early
        .iter()
        .map(|r| &r.detection_id)
        .filter(|id| truth[*id])
        .collect();
    for id in walker_ids.iter().step_by(2) {
        labels.insert((*id).clone(), (true, LabelSource::Ops));
    }
    let features = |r: &DetectionRow| DetectionFeatures {
        detection_id: r.detection_id.clone(),
        camera: r.camera.clone(),
        capture_us: r.capture_us,
        class_id: r.class_id,
        score: r.score,
        x_min: r.bbox[0],
        y_min: r.bbox[1],
        x_max: r.bbox[2],
        y_max: r.bbox[3],
        embedding: r.embedding.clone(),
    };
    let training: Vec<LabelledDetection> = early
        .iter()
        .filter_map(|r| {
            labels
                .get(&r.detection_id)
                .map(|(real, source)| LabelledDetection {
                    features: features(r),
                    real: *real,
                    source: *source,
                })
        })
        .collect();
    let (train_rows, train_real) = train::input_rows(&training, NUM_CLASSES)?;
    if !train_real.iter().any(|r| *r) || train_real.iter().all(|r| *r) {
        bail!(
            "the clip's training labels lack a class: {training_len} labels",
            training_len = training.len()
        );
    }
    let model = train::train_verifier(&train_rows, &train_real, &Default::default())?;

    // Measured: every detection after train_s, against the ground truth.
    let late: Vec<&DetectionRow> = rows.iter().filter(|r| r.capture_us >= train_us).collect();
    let real: Vec<bool> = late.iter().map(|r| truth[&r.detection_id]).collect();
    let probabilities: Vec<f32> = late
        .iter()
        .map(|r| {
            model.probability(&camfleet_collector::learn::features::verifier_input(
                &features(r),
                NUM_CLASSES,
            ))
        })
        .collect();
    let alone = OperatingPoint::detector_alone(&real);
    let with = OperatingPoint::measure(
        "detector + verifier",
        model.threshold,
        &probabilities,
        &real,
    );
    let mut t = Table::new(
        format!(
            "learn: detector alone vs detector + verifier on the test clip ({} detections after {TRAIN_S} s: {} real)",
            real.len(),
            real.iter().filter(|r| **r).count()
        ),
        &["", "precision", "recall", "false kept", "real lost"],
    );
    for p in [&alone, &with] {
        t.row(vec![
            p.model.clone(),
            f(p.precision, 3),
            f(p.recall, 3),
            p.kept_false.to_string(),
            p.rejected_real.to_string(),
        ]);
    }
    t.note(format!(
        "learning clip ({SCENE_S} s, 640x360, {INFER_FPS} pictures/s inferred) through NanoDet-g + the SSDLite backbone on ONNX Runtime in {:.1} s; trained on {} labels of the first {TRAIN_S} s ({} stillness, {} ops), threshold {:.3}; ground truth: real = a person with IoU >= {IOU_REAL} with the walker's known box (docs/benchmarks.md)",
        infer_s,
        training.len(),
        training.iter().filter(|l| l.source == LabelSource::Stillness).count(),
        training.iter().filter(|l| l.source == LabelSource::Ops).count(),
        model.threshold
    ));
    t.emit(results)?;
    Ok(())
}
