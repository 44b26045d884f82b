//! The Spark path: Spark MLlib fits the verifier on the labelled-detections
//! Parquet table (written here in the documented schema), scripts/
//! spark-train-verifier.py writes ONNX + manifest, and the registry takes it
//! through `model import` and the shadow-evaluated `model promote`. Our ONNX
//! Runtime loader gives Spark's own probabilities to 1e-5.
//! Needs CAMFLEET_ANALYTICS_PYTHON (pyspark, pyarrow, numpy, onnx: scripts/
//! setup) and ORT_DYLIB_PATH (.services/env).

use camfleet_collector::learn::features::verifier_input;
use camfleet_collector::learn::model::Verifier;
use camfleet_collector::learn::runtime::OrtVerifier;
use camfleet_collector::learn::{synthetic, table};
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn a_verifier_fitted_by_spark_enters_the_registry_and_scores_like_spark() {
    let python = std::env::var("CAMFLEET_ANALYTICS_PYTHON")
        .expect("CAMFLEET_ANALYTICS_PYTHON is not set: run scripts/setup and source .services/env");
    let ort = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        ort.as_deref().is_some_and(Path::is_file),
        "ORT_DYLIB_PATH is not set: source .services/env"
    );
    let dir = tempfile::tempdir().unwrap();
    let labels = dir
        .path()
        .join("labels/depot/gate/2025/11/24/15/labelled.parquet");
    std::fs::create_dir_all(labels.parent().unwrap()).unwrap();
    let data = synthetic::poster_and_people("depot/gate", 400, 8, 31);
    std::fs::write(&labels, table::write_labelled(&data, 80)).unwrap();
    let out_dir = dir.path().join("spark-model");
    let predictions = dir.path().join("spark-predictions.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spark-train-verifier.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir.path().join("labels"))
        .arg(&out_dir)
        .arg("--predictions")
        .arg(&predictions)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spark training failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Our loader on Spark's model gives Spark's probabilities.
    let manifest = std::fs::read_to_string(out_dir.join("manifest.toml")).unwrap();
    let onnx = std::fs::read(out_dir.join("model.onnx")).unwrap();
    assert!(manifest.contains("trained_by = \"pyspark"), "{manifest}");
    let v = OrtVerifier::load(
        "verifier@depot@gate",
        "spark",
        &manifest,
        &onnx,
        ort.as_deref(),
    )
    .unwrap();
    let spark: std::collections::HashMap<String, f64> =
        serde_json::from_slice(&std::fs::read(&predictions).unwrap()).unwrap();
    assert_eq!(spark.len(), data.len());
    let rows: Vec<Vec<f32>> = data
        .iter()
        .map(|d| verifier_input(&d.features, v.num_classes()))
        .collect();
    let ours = v.probabilities(&rows).unwrap();
    let mut worst = 0f64;
    for (d, p) in data.iter().zip(&ours) {
        worst = worst.max((spark[&d.features.detection_id] - *p as f64).abs());
    }
    assert!(worst <= 1e-5, "max |spark - ort| = {worst}");

    // Through the registry's front door: import, then the gate.
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n\n[archive]\nroot = \"{}\"\n\n\
             [learning]\nmin_labels = 40\n",
            dir.path().join("archive").display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_camfleet-collector"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    let out = cli(&[
        "model",
        "import",
        "--name",
        "verifier@depot@gate",
        out_dir.to_str().unwrap(),
    ]);
    let version = out.split_whitespace().nth(1).unwrap().trim_end_matches(':');
    let out = cli(&[
        "model",
        "promote",
        "verifier@depot@gate",
        version,
        "--labels",
        dir.path().join("labels").to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("current {version}")), "{out}");
    let show = cli(&["model", "show", "verifier@depot@gate", version]);
    assert!(
        show.contains("\"detector alone\"") && show.contains("\"better\": true"),
        "{show}"
    );
}
