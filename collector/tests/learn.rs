//! The model side of on-premises learning against real ONNX Runtime
//! (ORT_DYLIB_PATH, from .services/env): ONNX written from onnx.proto gives
//! the Rust models' predictions to 1e-5; the registry's promote gate, load
//! checks, hot swap and rollback (docs/learning.md). Nothing here skips: a
//! missing runtime is a failure that says to run scripts/setup.

use camfleet_collector::archive::local::LocalArchive;
use camfleet_collector::learn::evaluate;
use camfleet_collector::learn::features::LabelledDetection;
use camfleet_collector::learn::model::{ModelSource, SceneModel, Verifier};
use camfleet_collector::learn::registry::{ModelName, Registry};
use camfleet_collector::learn::runtime::{LoadError, OrtSceneModel, OrtVerifier};
use camfleet_collector::learn::source::RegistryModelSource;
use camfleet_collector::learn::{synthetic, train, trainer};
use camfleet_shared::config::LearningConfig;
use std::path::{Path, PathBuf};

const CAMERA: &str = "depot/gate";
const NUM_CLASSES: usize = 80;
const EMBEDDING: usize = 16;

fn ort() -> Option<PathBuf> {
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        dylib.as_deref().is_some_and(Path::is_file),
        "ORT_DYLIB_PATH is not set or not a file: run scripts/setup and scripts/services up, \
         then `source .services/env` (scripts/test does this)"
    );
    dylib
}

fn learning() -> LearningConfig {
    LearningConfig {
        min_labels: 40,
        ..LearningConfig::default()
    }
}

fn data(n: usize, seed: u64) -> Vec<LabelledDetection> {
    synthetic::poster_and_people(CAMERA, n, EMBEDDING, seed)
}

#[test]
fn onnx_runtime_gives_the_rust_verifiers_probabilities() {
    let labelled = data(600, 1);
    let (rows, real) = train::input_rows(&labelled, NUM_CLASSES).unwrap();
    let model = train::train_verifier(&rows, &real, &train::VerifierTraining::default()).unwrap();
    let manifest = format!(
        "kind = \"verifier\"\nfeature_layout_version = 1\nnum_classes = {NUM_CLASSES}\n\
         embedding_dim = {EMBEDDING}\ninput_name = \"features\"\ninput_width = {}\n\
         output_name = \"probability\"\nthreshold = {}\ntrained_by = \"test\"\n\
         created_utc = \"2026-11-30T00:00:00Z\"\n",
        rows[0].len(),
        model.threshold
    );
    let ort_model = OrtVerifier::load(
        "verifier@depot@gate",
        "t",
        &manifest,
        &model.to_onnx(),
        ort().as_deref(),
    )
    .unwrap();
    let from_ort = ort_model.probabilities(&rows).unwrap();
    let mut worst = 0f32;
    for (row, p) in rows.iter().zip(&from_ort) {
        worst = worst.max((model.probability(row) - p).abs());
    }
    assert!(worst <= 1e-5, "max |rust - ort| = {worst}");
    // And it learned the situation: the poster is rejected, people kept.
    let point = evaluate::OperatingPoint::measure("m", model.threshold, &from_ort, &real);
    assert!(point.recall >= 0.97, "{point:?}");
    assert!(point.kept_false <= 3, "{point:?}");
}

#[test]
fn onnx_runtime_gives_the_rust_scene_distances() {
    let frames: Vec<Vec<f32>> = synthetic::normal_scene(400, 32, 2)
        .into_iter()
        .map(|f| f.1)
        .collect();
    let model = train::train_scene(&frames, &train::SceneTraining::default()).unwrap();
    let manifest = format!(
        "kind = \"scene\"\nfeature_layout_version = 1\nnum_classes = 0\nembedding_dim = 32\n\
         input_name = \"embedding\"\ninput_width = 32\noutput_name = \"distance\"\n\
         threshold = {}\ntrained_by = \"test\"\ncreated_utc = \"2026-11-30T00:00:00Z\"\n",
        model.threshold
    );
    let ort_model = OrtSceneModel::load(
        "scene@depot@gate",
        "t",
        &manifest,
        &model.to_onnx(),
        ort().as_deref(),
    )
    .unwrap();
    let mut probe = frames.clone();
    probe.push(vec![0.0; 32]); // a black / covered picture's embedding
    let from_ort = ort_model.distances(&probe).unwrap();
    for (x, d) in probe.iter().zip(&from_ort) {
        let want = model.distance(x);
        // Distances are not bounded like probabilities: 1e-5 relative.
        assert!(
            (want - d).abs() <= 1e-5 * want.max(1.0),
            "rust {want} vs ort {d}"
        );
    }
    assert!(from_ort[..400].iter().all(|d| *d < ort_model.threshold()));
    assert!(ort_model.distance(&probe[400]).unwrap() > ort_model.threshold());
}

#[test]
fn bad_models_are_refused_with_what_is_wrong() {
    let dylib = ort();
    let labelled = data(200, 3);
    let (rows, real) = train::input_rows(&labelled, NUM_CLASSES).unwrap();
    let model = train::train_verifier(&rows, &real, &Default::default()).unwrap();
    let good = format!(
        "kind = \"verifier\"\nfeature_layout_version = 1\nnum_classes = {NUM_CLASSES}\n\
         embedding_dim = {EMBEDDING}\ninput_name = \"features\"\ninput_width = {}\n\
         output_name = \"probability\"\nthreshold = 0.5\ntrained_by = \"test\"\n\
         created_utc = \"2026-11-30T00:00:00Z\"\n",
        rows[0].len()
    );
    let load =
        |m: &str, b: &[u8]| OrtVerifier::load("verifier@depot@gate", "bad", m, b, dylib.as_deref());
    let e = load(&good, b"garbage, not a model").err().unwrap();
    assert!(e.to_string().contains("cannot load model.onnx"), "{e}");
    // Model of another width than the manifest says.
    let narrow = train::LinearVerifier {
        weights: vec![0.1; 10],
        bias: 0.0,
        threshold: 0.5,
    };
    let e = load(&good, &narrow.to_onnx()).err().unwrap();
    assert!(e.to_string().contains("input \"features\""), "{e}");
    // A scene model is not a verifier.
    let scene = good.replace("kind = \"verifier\"", "kind = \"scene\"");
    assert!(matches!(
        load(&scene, &model.to_onnx()),
        Err(LoadError::Manifest { .. }) | Err(LoadError::Kind { .. })
    ));
    // A model trained on another feature layout.
    let old = good.replace("feature_layout_version = 1", "feature_layout_version = 0");
    let e = load(&old, &model.to_onnx()).err().unwrap();
    assert!(e.to_string().contains("feature_layout_version 0"), "{e}");
    assert!(load(&good, &model.to_onnx()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_hot_swaps_refuses_corrupt_and_rolls_back_everywhere() {
    let dylib = ort();
    let root = tempfile::tempdir().unwrap();
    let open = || Registry::new(LocalArchive::open(root.path().to_str().unwrap()).unwrap());
    let registry = open();
    let cfg = learning();
    let name = ModelName::parse("verifier@depot@gate").unwrap();

    // 1. First training: compared with the detector alone, promoted.
    let first =
        trainer::verifier_candidate(&registry, &cfg, &name, &data(400, 10), dylib.as_deref())
            .await
            .unwrap();
    assert!(first.better, "{}", first.reason);
    let metrics: serde_json::Value = serde_json::from_str(&first.files.metrics_json).unwrap();
    assert_eq!(metrics["shadow"]["baseline"]["model"], "detector alone");
    assert!(
        metrics["shadow"]["candidate"]["precision"]
            .as_f64()
            .unwrap()
            > 0.9
    );
    assert!(metrics["shadow"]["candidate"]["recall"].as_f64().unwrap() >= 0.95);
    let v1 = registry.add_version(&name, &first.files).await.unwrap();
    trainer::promote(&registry, &cfg, &name, &v1, None, false, dylib.as_deref())
        .await
        .unwrap();

    // Two collector instances, each with its own source over the registry.
    let a = RegistryModelSource::new(dylib.clone());
    let b = RegistryModelSource::new(dylib.clone());
    a.poll(&registry).await.unwrap();
    b.poll(&open()).await.unwrap();
    assert_eq!(a.verifier(CAMERA).unwrap().version(), v1);
    assert_eq!(b.verifier(CAMERA).unwrap().version(), v1);
    assert!(a.verifier("depot/other").is_none());

    // 2. A second candidate is no better than the first on the same
    // situation: the gate refuses it, nothing moves.
    let second =
        trainer::verifier_candidate(&registry, &cfg, &name, &data(400, 11), dylib.as_deref())
            .await
            .unwrap();
    let v2 = registry.add_version(&name, &second.files).await.unwrap();
    if !second.better {
        let e = trainer::promote(&registry, &cfg, &name, &v2, None, false, dylib.as_deref())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not better"), "{e}");
        assert_eq!(registry.current(&name).await.unwrap().unwrap().version, v1);
    }
    // Promoted anyway (ops' choice): picked up without restart.
    trainer::promote(&registry, &cfg, &name, &v2, None, true, dylib.as_deref())
        .await
        .unwrap();
    a.poll(&registry).await.unwrap();
    b.poll(&registry).await.unwrap();
    assert_eq!(a.verifier(CAMERA).unwrap().version(), v2);
    assert_eq!(b.verifier(CAMERA).unwrap().version(), v2);

    // 3. A corrupt candidate: refused by promote (even with --force) ...
    let mut corrupt = first.files.clone();
    corrupt.onnx = bytes::Bytes::from_static(b"\x08\x07garbage bytes, not ONNX");
    let bad = registry.add_version(&name, &corrupt).await.unwrap();
    let e = trainer::promote(&registry, &cfg, &name, &bad, None, true, dylib.as_deref())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot load model.onnx"), "{e}");
    assert_eq!(registry.current(&name).await.unwrap().unwrap().version, v2);
    // ... and, forced into `current` behind the gate's back, refused by
    // the running sources, which keep serving v2.
    registry.set_current(&name, &bad).await.unwrap();
    a.poll(&registry).await.unwrap();
    let still = a.verifier(CAMERA).unwrap();
    assert_eq!(still.version(), v2);
    assert_eq!(
        still
            .probabilities(&[vec![0.0; 7 + NUM_CLASSES + EMBEDDING]])
            .unwrap()
            .len(),
        1,
        "the previous model still answers"
    );
    // A wrong input width (a model for another embedding size) too.
    let mut wrong = first.files.clone();
    wrong.onnx = train::LinearVerifier {
        weights: vec![0.5; 7 + NUM_CLASSES + 4],
        bias: 0.0,
        threshold: 0.5,
    }
    .to_onnx()
    .into();
    let wrong_v = registry.add_version(&name, &wrong).await.unwrap();
    assert!(trainer::promote(
        &registry,
        &cfg,
        &name,
        &wrong_v,
        None,
        true,
        dylib.as_deref()
    )
    .await
    .is_err());
    registry.set_current(&name, &wrong_v).await.unwrap();
    b.poll(&registry).await.unwrap();
    assert_eq!(b.verifier(CAMERA).unwrap().version(), v2);

    // 4. Rollback (twice: past the two forced bad pointers) restores v2 and
    // then v1 in both instances.
    registry.rollback(&name).await.unwrap(); // -> bad
    registry.rollback(&name).await.unwrap(); // -> v2
    let p = registry.rollback(&name).await.unwrap(); // -> v1
    assert_eq!(p.version, v1);
    a.poll(&registry).await.unwrap();
    b.poll(&open()).await.unwrap();
    assert_eq!(a.verifier(CAMERA).unwrap().version(), v1);
    assert_eq!(b.verifier(CAMERA).unwrap().version(), v1);
    assert_eq!(a.versions_in_force().get(&name.to_string()), Some(&v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_source_picks_up_a_promotion_without_restart() {
    let dylib = ort();
    let root = tempfile::tempdir().unwrap();
    let open = || Registry::new(LocalArchive::open(root.path().to_str().unwrap()).unwrap());
    let registry = open();
    let cfg = learning();
    let name = ModelName::parse("scene@depot@gate").unwrap();
    let source = std::sync::Arc::new(RegistryModelSource::new(dylib.clone()));
    let _poller = source.spawn_polling(open(), std::time::Duration::from_millis(100));
    assert!(source.scene(CAMERA).is_none());
    let frames = synthetic::normal_scene(300, 24, 5);
    let c = trainer::scene_candidate(&cfg, &name, &frames, dylib.as_deref()).unwrap();
    assert!(c.better, "{}", c.reason);
    let v = registry.add_version(&name, &c.files).await.unwrap();
    trainer::promote(&registry, &cfg, &name, &v, None, false, dylib.as_deref())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while source.scene(CAMERA).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "promotion not picked up in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let scene = source.scene(CAMERA).unwrap();
    assert_eq!(scene.version(), v);
    assert!(
        scene.distance(&[0.0; 24]).unwrap() >= scene.threshold(),
        "a covered picture alarms"
    );
    assert!(scene.distance(&frames[0].1).unwrap() < scene.threshold());
}
