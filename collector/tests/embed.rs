//! The learning embedding backbone (collector/models/ssdlite-backbone.toml,
//! converted by scripts/setup) on real ONNX Runtime and real photographs.
//! Nothing here skips: a missing model or runtime says to run scripts/setup.

use camfleet_collector::learn::embed::{EmbedError, Embedder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cache() -> PathBuf {
    match std::env::var_os("CAMFLEET_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/camfleet"),
    }
}

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ssdlite-backbone.toml")
}

fn dylib() -> PathBuf {
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        dylib.as_deref().is_some_and(Path::is_file),
        "ORT_DYLIB_PATH is not set or not a file: run scripts/setup and scripts/services up, \
         then `source .services/env` (scripts/test does this)"
    );
    dylib.unwrap()
}

fn embedder() -> Embedder {
    let models = cache().join("models");
    assert!(
        models.join("ssdlite-backbone-0.2/backbone.onnx").is_file(),
        "the embedding backbone is missing: run scripts/setup"
    );
    Embedder::load(&manifest(), &models, Some(&dylib())).unwrap()
}

/// A photo as (width, height, I420), scaled by ffmpeg to even sizes.
fn photo_i420(name: &str, w: u32, h: u32) -> Vec<u8> {
    let path = cache().join("photos").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(&path)
        .args(["-vf", &format!("scale={w}:{h}")])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), (w * h * 3 / 2) as usize);
    out.stdout
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_have_the_manifest_length_and_batches_change_nothing() {
    let mut e = embedder();
    assert_eq!(e.dim(), 1280);
    let astronaut = photo_i420("astronaut.png", 512, 512);
    let bus = photo_i420("bus.jpg", 810, 1080);
    let alone = e.embed_pictures(&[(512, 512, &astronaut)]).unwrap();
    let both = e
        .embed_pictures(&[(810, 1080, &bus), (512, 512, &astronaut)])
        .unwrap();
    assert_eq!(alone[0].len(), 1280);
    assert!(
        alone[0].iter().all(|v| v.is_finite() && *v >= 0.0),
        "ReLU6 + mean is >= 0"
    );
    let diff = alone[0]
        .iter()
        .zip(&both[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-4, "batched differs by {diff}");
    // The whole-picture box is the picture.
    let whole = e
        .embed_boxes(512, 512, &astronaut, &[[0.0, 0.0, 1.0, 1.0]])
        .unwrap();
    let diff = alone[0]
        .iter()
        .zip(&whole[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-4, "whole-picture crop differs by {diff}");
}

#[test]
fn crops_of_people_are_closer_to_each_other_than_to_a_bus_or_a_wall() {
    let mut e = embedder();
    let astronaut = photo_i420("astronaut.png", 512, 512);
    let bus = photo_i420("bus.jpg", 810, 1080);
    // Boxes as in tests/detect.rs (pixels measured on the photos).
    let man = [52.0 / 810.0, 396.0 / 1080.0, 245.0 / 810.0, 905.0 / 1080.0];
    let the_bus = [18.0 / 810.0, 228.0 / 1080.0, 800.0 / 810.0, 740.0 / 1080.0];
    let on_bus = e.embed_boxes(810, 1080, &bus, &[man, the_bus]).unwrap();
    let person = e
        .embed_boxes(
            512,
            512,
            &astronaut,
            &[[18.0 / 512.0, 14.0 / 512.0, 362.0 / 512.0, 1.0]],
        )
        .unwrap();
    let grey = vec![128u8; 64 * 64 * 3 / 2];
    let wall = e.embed_pictures(&[(64, 64, &grey)]).unwrap();
    let people = cosine(&person[0], &on_bus[0]);
    let person_bus = cosine(&person[0], &on_bus[1]);
    let person_wall = cosine(&person[0], &wall[0]);
    eprintln!("cosine person-person {people:.3}, person-bus {person_bus:.3}, person-wall {person_wall:.3}");
    assert!(people > person_bus, "{people} <= {person_bus}");
    assert!(people > person_wall, "{people} <= {person_wall}");
}

#[test]
fn a_manifest_with_the_wrong_length_is_refused_naming_it() {
    let text = std::fs::read_to_string(manifest())
        .unwrap()
        .replace("dim = 1280", "dim = 512");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.toml");
    std::fs::write(&path, text).unwrap();
    let err = Embedder::load(&path, &cache().join("models"), Some(&dylib())).unwrap_err();
    assert!(matches!(err, EmbedError::Model { .. }), "{err:?}");
    assert!(err.to_string().contains("dim = 512"), "{err}");
    let err = Embedder::load(
        &dir.path().join("none.toml"),
        &cache().join("models"),
        Some(&dylib()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("none.toml"), "{err}");
}
