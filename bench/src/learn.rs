//! Learning (docs/learning.md): training time per 10k labelled detections
//! (ours: linfa in-process; peer: Spark MLlib's LogisticRegression on the
//! same rows, fit time only, JVM already warm), verifier cost per detection
//! on ONNX Runtime at batch 1 and 32 (peer: the same weights in plain Rust),
//! the scene model's cost per frame, and what the verifier changes on the
//! synthetic poster-and-people data (detector alone vs detector + verifier).

use crate::table::{f, Table};
use anyhow::Context;
use camfleet_collector::learn::features::verifier_input;
use camfleet_collector::learn::model::{SceneModel, Verifier};
use camfleet_collector::learn::runtime::{OrtSceneModel, OrtVerifier};
use camfleet_collector::learn::{evaluate, synthetic, table, train};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

pub struct Args {
    pub labels: usize,
    pub embedding_dim: usize,
    pub scene_dim: usize,
    pub reps: u32,
    /// Python with pyspark + numpy (the analytics venv); `None` = no Spark row.
    pub python: Option<PathBuf>,
    pub work: PathBuf,
}

const NUM_CLASSES: usize = 80;

fn best_of<T>(reps: u32, mut run: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let out = run()?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    Ok((best, last.expect("reps >= 1")))
}

const SPARK_PEER: &str = r#"
import json, sys, time
from pyspark.sql import SparkSession
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F
spark = (SparkSession.builder.master("local[1]").config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1").config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.parquet(sys.argv[1]).select(array_to_vector("verifier_input").alias("features"),
                                            F.col("real").cast("double").alias("label")).cache()
df.count()
lr = LogisticRegression(regParam=0.01, maxIter=200)
lr.fit(df)  # warm-up: JIT, code paths
best = 1e9
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); lr.fit(df); best = min(best, time.perf_counter() - t)
print(json.dumps({"fit_s": best}))
spark.stop()
"#;

pub fn run(args: Args, results: Option<&std::path::Path>) -> anyhow::Result<()> {
    let data = synthetic::poster_and_people("bench/cam", args.labels, args.embedding_dim, 1);
    let (rows, real) = train::input_rows(&data, NUM_CLASSES)?;
    let width = rows[0].len();

    // 1. Training.
    let (ours_s, model) = best_of(args.reps, || {
        Ok(train::train_verifier(&rows, &real, &Default::default())?)
    })?;
    let per_10k = |s: f64| s * 10_000.0 / args.labels as f64;
    let mut t = Table::new(
        format!(
            "learn: verifier training, {} labelled detections x {width} features",
            args.labels
        ),
        &["trainer", "fit s", "s per 10k labels", "vs ours"],
    );
    t.row(vec![
        "camfleet (linfa-logistic, L-BFGS)".into(),
        f(ours_s, 3),
        f(per_10k(ours_s), 3),
        "1.00".into(),
    ]);
    match &args.python {
        Some(python) => {
            let parquet = args.work.join("learn-labels.parquet");
            std::fs::write(&parquet, table::write_labelled(&data, NUM_CLASSES))?;
            let out = Command::new(python)
                .arg("-c")
                .arg(SPARK_PEER)
                .arg(&parquet)
                .arg(args.reps.to_string())
                .env("SPARK_LOCAL_IP", "127.0.0.1")
                .output()
                .context("spark peer")?;
            anyhow::ensure!(
                out.status.success(),
                "spark peer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(
                out.stdout
                    .split(|b| *b == b'\n')
                    .rfind(|l| l.starts_with(b"{"))
                    .context("spark peer printed no result")?,
            )?;
            let spark_s = v["fit_s"].as_f64().context("fit_s")?;
            t.row(vec![
                "Spark MLlib LogisticRegression (local[1])".into(),
                f(spark_s, 3),
                f(per_10k(spark_s), 3),
                f(spark_s / ours_s, 2),
            ]);
            let _ = std::fs::remove_file(&parquet);
        }
        None => t.note("no --python: the Spark peer was not run"),
    }
    t.note("best of the reps; Spark: fit only, data cached, after one warm-up fit");
    t.emit(results)?;

    // 2. Scoring cost per detection.
    let manifest = format!(
        "kind = \"verifier\"\nfeature_layout_version = 1\nnum_classes = {NUM_CLASSES}\n\
         embedding_dim = {}\ninput_name = \"features\"\ninput_width = {width}\n\
         output_name = \"probability\"\nthreshold = {}\ntrained_by = \"bench\"\n\
         created_utc = \"2026-01-01T00:00:00Z\"\n",
        args.embedding_dim, model.threshold
    );
    let ort = OrtVerifier::load(
        "verifier@bench@cam",
        "bench",
        &manifest,
        &model.to_onnx(),
        None,
    )?;
    let n = rows.len().min(3200);
    let mut t = Table::new(
        format!("learn: verifier cost per detection ({width} features, one thread)"),
        &["scorer", "batch", "µs per detection", "vs plain Rust"],
    );
    let (rust_s, _) = best_of(args.reps, || {
        let mut s = 0f32;
        for r in &rows[..n] {
            s += model.probability(r);
        }
        Ok(s)
    })?;
    let rust_us = rust_s * 1e6 / n as f64;
    let (build_s, _) = best_of(args.reps, || {
        Ok(data[..n]
            .iter()
            .map(|d| verifier_input(&d.features, NUM_CLASSES))
            .collect::<Vec<_>>())
    })?;
    for batch in [1usize, 32] {
        let (s, _) = best_of(args.reps, || {
            for chunk in rows[..n].chunks(batch) {
                ort.probabilities(chunk)?;
            }
            Ok(())
        })?;
        let us = s * 1e6 / n as f64;
        t.row(vec![
            "ONNX Runtime (OrtVerifier)".into(),
            batch.to_string(),
            f(us, 2),
            f(us / rust_us, 1),
        ]);
    }
    t.row(vec![
        "plain Rust (same f32 weights)".into(),
        "-".into(),
        f(rust_us, 3),
        "1.0".into(),
    ]);
    t.row(vec![
        "building the input row (verifier_input)".into(),
        "-".into(),
        f(build_s * 1e6 / n as f64, 3),
        "-".into(),
    ]);
    t.emit(results)?;

    // 3. Scene model per frame.
    let frames: Vec<Vec<f32>> = synthetic::normal_scene(2000, args.scene_dim, 2)
        .into_iter()
        .map(|f| f.1)
        .collect();
    let (scene_train_s, scene) =
        best_of(1, || Ok(train::train_scene(&frames, &Default::default())?))?;
    let scene_manifest = format!(
        "kind = \"scene\"\nfeature_layout_version = 1\nnum_classes = 0\nembedding_dim = {d}\n\
         input_name = \"embedding\"\ninput_width = {d}\noutput_name = \"distance\"\n\
         threshold = {}\ntrained_by = \"bench\"\ncreated_utc = \"2026-01-01T00:00:00Z\"\n",
        scene.threshold,
        d = args.scene_dim
    );
    let ort_scene = OrtSceneModel::load(
        "scene@bench@cam",
        "bench",
        &scene_manifest,
        &scene.to_onnx(),
        None,
    )?;
    let m = 200;
    let (ort_s, _) = best_of(args.reps, || {
        for fr in &frames[..m] {
            ort_scene.distance(fr)?;
        }
        Ok(())
    })?;
    let (rust_scene_s, _) = best_of(args.reps, || {
        Ok(frames[..m].iter().map(|fr| scene.distance(fr)).sum::<f32>())
    })?;
    let mut t = Table::new(
        format!("learn: scene model, {}-d frame embeddings", args.scene_dim),
        &["step", "time", "vs plain Rust"],
    );
    t.row(vec![
        "train on 2000 frames (s)".into(),
        f(scene_train_s, 3),
        "-".into(),
    ]);
    t.row(vec![
        "distance per frame, ONNX Runtime (µs)".into(),
        f(ort_s * 1e6 / m as f64, 1),
        f(ort_s / rust_scene_s, 3),
    ]);
    t.row(vec![
        "distance per frame, plain Rust f64 (µs)".into(),
        f(rust_scene_s * 1e6 / m as f64, 1),
        "1.0".into(),
    ]);
    t.emit(results)?;

    // 4. What the verifier changes (synthetic data, held-out split).
    let (training, holdout) = evaluate::split(&data, 0.25);
    let (tr_rows, tr_real) = train::input_rows(&training, NUM_CLASSES)?;
    let held_model = train::train_verifier(&tr_rows, &tr_real, &Default::default())?;
    let (ho_rows, ho_real) = train::input_rows(&holdout, NUM_CLASSES)?;
    let probs: Vec<f32> = ho_rows.iter().map(|r| held_model.probability(r)).collect();
    let alone = evaluate::OperatingPoint::detector_alone(&ho_real);
    let with =
        evaluate::OperatingPoint::measure("verifier", held_model.threshold, &probs, &ho_real);
    let mut t = Table::new(
        format!(
            "learn: detector alone vs detector + verifier (synthetic poster + people, {} held-out)",
            ho_real.len()
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
    t.note("synthetic data (learn::synthetic); the test clip's numbers are the next table (learn_clip.rs)");
    t.emit(results)?;
    Ok(())
}
