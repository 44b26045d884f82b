//! Issue 11, data side, end to end on real Kafka, real ONNX Runtime, the
//! real detector and the real embedding backbone: the learning clip
//! (tests/src/learning_clip.rs: a still poster of a person, another person
//! walking across, then black) streamed by the agent into a collector with
//! `[inference.embedding]`, a test verifier and a test scene model.
//!
//! * every object on `camfleet.detections.v1` carries its id and the
//!   verifier's verdict; the poster's detections are flagged rejected, yet
//!   published and recorded;
//! * the detections, labels and frames tables hold exactly the published
//!   objects (read back by pyarrow, a peer) with 1280-d embeddings;
//! * the stillness rule labels the poster a hard negative, never the walker;
//! * `camfleet-collector label` files an ops label; malformed and unknown ids
//!   are refused naming the problem;
//! * the black section raises `tampered` from the scene model.

use camfleet_collector::learn::model::{ModelError, ModelSource, SceneModel, Verifier};
use camfleet_collector::learn::{dataset, features::LabelSource};
use camfleet_shared::config::CollectorConfig;
use camfleet_tests::*;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Test verifier: a fixed rule, "nothing in the left quarter of the picture
/// is real" (where the clip's poster hangs).
struct LeftQuarterIsFake;

impl Verifier for LeftQuarterIsFake {
    fn name(&self) -> &str {
        "test-left-quarter"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn num_classes(&self) -> usize {
        80
    }
    fn threshold(&self) -> f32 {
        0.5
    }
    fn probabilities(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        // Row layout: learn::features::verifier_input; [1] is the box centre x.
        Ok(rows
            .iter()
            .map(|r| if r[1] < 0.25 { 0.1 } else { 0.9 })
            .collect())
    }
}

/// Test scene model: relative L2 distance from the first frame it sees.
#[derive(Default)]
struct FirstFrameScene {
    reference: Mutex<Option<Vec<f32>>>,
    seen: Mutex<Vec<f32>>,
}

impl SceneModel for FirstFrameScene {
    fn name(&self) -> &str {
        "test-first-frame"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn threshold(&self) -> f32 {
        // Measured on the clip: the scene with the walker stays below 0.27
        // of the first frame's norm, the black section is at 0.40.
        0.33
    }
    fn distance(&self, e: &[f32]) -> Result<f32, ModelError> {
        let mut r = self.reference.lock().unwrap();
        let r = r.get_or_insert_with(|| e.to_vec());
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        let d = r
            .iter()
            .zip(e)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt()
            / norm;
        self.seen.lock().unwrap().push(d);
        Ok(d)
    }
}

struct TestModels {
    scene: Arc<FirstFrameScene>,
}

impl ModelSource for TestModels {
    fn verifier(&self, _camera: &str) -> Option<Arc<dyn Verifier>> {
        Some(Arc::new(LeftQuarterIsFake))
    }
    fn scene(&self, _camera: &str) -> Option<Arc<dyn SceneModel>> {
        Some(self.scene.clone())
    }
}

#[test]
fn learning_features_tables_stillness_labels_and_scene_events() {
    let run = Scenario::new("learn", 1);
    let topics = ["detections", "events", "features", "labels"]
        .map(|t| run.services.fresh_topic(&format!("learn-{t}"), 1));
    let [detections, events, features, labels] = &topics;
    let y4m = run.dir.path().join("learning.y4m");
    let clip = learning_clip::build(&env_path("CAMFLEET_PHOTOS"), 12, 4, &y4m);
    let total = clip.scene_frames + clip.black_frames;

    let agent = learning_clip::agent_config(&run, "lab/learn", &y4m);
    // Paced (real time): the stillness rule measures capture time, which an
    // unpaced file source would squeeze into a second or two.
    run.spawn("agent", "camfleet-agent", &agent)
        .wait_success(Duration::from_secs(120));

    let root = run.dir.path().join("archive");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config_text = format!(
        "{}\n[inference]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\ninfer_fps = 5\n\
         detections_topic = \"{detections}\"\nevents_topic = \"{events}\"\n\
         [inference.embedding]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\nscene_period_s = 0.5\n\
         features_topic = \"{features}\"\nlabels_topic = \"{labels}\"\ntables_flush_s = 1\n\
         stillness_iou = 0.7\nstillness_min_s = 3\nstillness_gap_s = 2\n",
        run.collector_config(root.to_str().unwrap()),
        repo.join("collector/models/nanodet-g.toml").display(),
        repo.join("collector/models/ssdlite-backbone.toml")
            .display(),
        models = env_path("CAMFLEET_MODELS").display(),
    );
    let config_file = run.dir.path().join("collector.toml");
    std::fs::write(&config_file, &config_text).unwrap();
    let config = CollectorConfig::from_toml(&config_text).unwrap();

    // The collector in-process: the test's models go in through ModelSource.
    let scene = Arc::new(FirstFrameScene::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let processor = camfleet_collector::infer::processor::InferenceProcessor::new(
        config.inference.as_ref().unwrap(),
        &config.kafka,
    )
    .unwrap()
    .with_models(Arc::new(TestModels {
        scene: scene.clone(),
    }));
    let collector = {
        let config = config.clone();
        let mut stopped = stopped.clone();
        rt.spawn(async move {
            let archive = camfleet_collector::archive::AnyArchive::open(&config.archive.root)
                .await
                .unwrap();
            camfleet_collector::app::run_with(
                config,
                archive,
                Arc::new(camfleet_collector::stats::Stats::default()),
                vec![Box::new(processor)],
                async move {
                    let _ = stopped.changed().await;
                },
            )
            .await
        })
    };
    let writer = {
        let config = config.clone();
        let stopped = stopped.clone();
        rt.spawn(async move {
            let archive = camfleet_collector::archive::AnyArchive::open(&config.archive.root)
                .await
                .unwrap();
            let embedding = config
                .inference
                .as_ref()
                .unwrap()
                .embedding
                .clone()
                .unwrap();
            camfleet_collector::learn::table_writer::run(
                &archive,
                &config.kafka,
                &embedding,
                stopped,
            )
            .await
        })
    };

    // 160 frames at 10 fps inferred at 5 fps: 80 records.
    let records = read_json(&run.services, detections, |r| {
        r.len() >= (total / 2) as usize
    });
    let mut published = std::collections::BTreeMap::new();
    let (mut poster_dets, mut walker_dets) = (0, 0);
    for r in &records {
        for (i, o) in r["objects"].as_array().unwrap().iter().enumerate() {
            let id = o["id"].as_str().unwrap().to_string();
            assert_eq!(id, format!("lab/learn:{}:{}:{i}", r["epoch"], r["seq"]));
            let v = &o["verifier"];
            assert_eq!(v["name"], "test-left-quarter", "{o}");
            let left = centre_x(o) < 0.25;
            assert_eq!(v["rejected"], left, "flagged, still published: {o}");
            if o["label"] == "person" {
                if left {
                    poster_dets += 1;
                } else {
                    walker_dets += 1;
                }
            }
            published.insert(id, o.clone());
        }
    }
    eprintln!(
        "published objects: {}, poster {poster_dets}, walker {walker_dets}",
        published.len()
    );
    assert!(
        poster_dets >= 40,
        "the poster is detected on most scene pictures: {poster_dets}"
    );
    assert!(
        walker_dets >= 30,
        "the walker is detected on most scene pictures: {walker_dets}"
    );

    // Records with ids and verdicts still validate against the published
    // schema (additions only), checked by an independent validator.
    let records_file = run.dir.path().join("records.json");
    std::fs::write(&records_file, serde_json::to_string(&records).unwrap()).unwrap();
    let check = Command::new(env_path("CAMFLEET_TOOLS_PYTHON"))
        .args([
            "-c",
            "import json,sys,jsonschema\n\
             s=json.load(open(sys.argv[1])); v=jsonschema.Draft202012Validator(s)\n\
             for r in json.load(open(sys.argv[2])): v.validate(r)",
        ])
        .arg(repo.join("docs/detections.schema.json"))
        .arg(&records_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The tables catch up within a few flushes.
    let cam = camfleet_shared::CameraId::new("lab/learn").unwrap();
    let archive = rt
        .block_on(camfleet_collector::archive::AnyArchive::open(
            root.to_str().unwrap(),
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = rt
            .block_on(dataset::load_detections(&archive, Some(&cam), None, None))
            .unwrap();
        if rows.len() >= published.len() {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "tables hold {} of {} objects",
            rows.len(),
            published.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut ids: Vec<&String> = rows.iter().map(|r| &r.detection_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        published.keys().collect::<Vec<_>>(),
        "each published object once"
    );
    for r in &rows {
        let o = &published[&r.detection_id];
        assert_eq!(r.embedding.len(), 1280);
        assert!((r.score as f64 - o["score"].as_f64().unwrap()).abs() < 1e-6);
        assert_eq!(
            r.verifier.as_ref().unwrap().rejected,
            o["verifier"]["rejected"]
        );
    }

    // Stillness: the poster's detections, and none of the walker's.
    let labelled = rt
        .block_on(dataset::load_labelled(&archive, Some(&cam), None, None))
        .unwrap();
    let still: Vec<_> = labelled
        .iter()
        .filter(|l| l.source == LabelSource::Stillness)
        .collect();
    let poster_still = still
        .iter()
        .filter(|l| (l.features.x_min + l.features.x_max) / 2.0 < 0.25)
        .count();
    eprintln!(
        "stillness labels: {} ({} on the poster)",
        still.len(),
        poster_still
    );
    assert!(
        poster_still >= 30,
        "the poster became a hard negative: {poster_still}"
    );
    assert_eq!(
        poster_still,
        still.len(),
        "the walker never gets a stillness label"
    );
    assert!(still.iter().all(|l| !l.real));

    // Ops labels through the CLI: a malformed id, an unknown one, a real one.
    let label = |id: &str, real: &str| {
        Command::new(binary("camfleet-collector"))
            .args(["label", id, real, "--config"])
            .arg(&config_file)
            .output()
            .unwrap()
    };
    let out = label("lab/learn:1:2", "true");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<site>/<camera>:<epoch>:<seq>:<index>"));
    let out = label("lab/learn:1:999999:0", "true");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no detection lab/learn:1:999999:0"));
    let poster_id = still[0].features.detection_id.clone();
    let out = label(&poster_id, "true");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(30),
        "the ops label in the labels table",
        || {
            rt.block_on(dataset::load_labelled(&archive, Some(&cam), None, None))
                .unwrap()
                .iter()
                .any(|l| {
                    l.features.detection_id == poster_id && l.real && l.source == LabelSource::Ops
                })
        },
    );

    // pyarrow (a peer) reads the tables: same ids, 1280-d float32 embeddings, UTC micros.
    let check = Command::new(env_path("CAMFLEET_ANALYTICS_PYTHON"))
        .args([
            "-c",
            "import sys, glob, json, pyarrow.parquet as pq, pyarrow as pa\n\
             root = sys.argv[1]\n\
             d = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(root + '/*/*/*/*/*/*/detections.parquet'))])\n\
             assert d.schema.field('capture_time').type == pa.timestamp('us', tz='UTC'), d.schema\n\
             assert d.schema.field('embedding').type == pa.list_(pa.float32()), d.schema\n\
             assert set(len(e) for e in d.column('embedding').to_pylist()) == {1280}\n\
             l = pa.concat_tables([pq.read_table(f) for f in glob.glob(root + '/*/*/*/*/*/*/labels.parquet')])\n\
             f = pa.concat_tables([pq.read_table(f) for f in glob.glob(root + '/*/*/*/*/*/*/frames.parquet')])\n\
             print(json.dumps({'ids': d.column('detection_id').to_pylist(),\n\
               'rejected': d.column('verifier_rejected').to_pylist(),\n\
               'labels': sorted(set(zip(l.column('source').to_pylist(), l.column('real').to_pylist()))),\n\
               'frames': f.num_rows}))",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let peer: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let mut peer_ids: Vec<String> = peer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    peer_ids.sort();
    assert_eq!(peer_ids, published.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        peer["labels"],
        serde_json::json!([["ops", true], ["stillness", false]])
    );
    assert!(peer["frames"].as_u64().unwrap() >= 20, "{peer}");

    // The black section raises `tampered` from the scene model.
    eprintln!("scene distances: {:?}", scene.seen.lock().unwrap());
    let evs = read_json(&run.services, events, |e| {
        e.iter().any(|e| e["kind"] == "tampered")
    });
    let tampered: Vec<_> = evs.iter().filter(|e| e["kind"] == "tampered").collect();
    assert_eq!(tampered[0]["phase"], "started");
    let seq = tampered[0]["seq"].as_u64().unwrap();
    assert!(
        seq >= clip.scene_frames as u64,
        "raised in the black section, at {seq}"
    );
    assert!(
        evs.iter().all(|e| e["kind"] != "scene_changed"),
        "the scene itself never changed: {evs:?}"
    );

    stop.send(true).unwrap();
    rt.block_on(collector).unwrap().unwrap();
    rt.block_on(writer).unwrap().unwrap();
}

/// The table writer on HDFS (the same `Archive` path as the local
/// directory): a replayed batch of records leaves one row per detection, and
/// the Java HDFS shell (a peer) sees exactly the three tables in the hour.
#[test]
fn learning_tables_on_hdfs_are_idempotent() {
    use camfleet_collector::learn::record::{
        FeatureObject, FeatureRecord, ModelName, FEATURES_SCHEMA,
    };
    use camfleet_collector::learn::table_writer::TableWriter;
    let services = Services::get();
    let base = format!("/camfleet-test/learning-{}", std::process::id());
    let root = format!("{}{base}", services.hdfs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let archive = rt
        .block_on(camfleet_collector::archive::AnyArchive::open(&root))
        .unwrap();
    let config: camfleet_shared::config::EmbeddingConfig =
        toml_embedding("model = \"m.toml\"\nstillness_min_s = 1\nstillness_gap_s = 5");
    let hour = 1_763_764_012_000_000i64; // 2025-11-21T22:26:52Z
    let record = |seq: u64| FeatureRecord {
        schema: FEATURES_SCHEMA.into(),
        camera: "lab/hdfs".into(),
        epoch: 1,
        seq,
        capture_us: hour + seq as i64 * 500_000,
        model: ModelName {
            name: "nanodet-g".into(),
            version: "3.0.4".into(),
        },
        backbone: ModelName {
            name: "ssdlite-backbone".into(),
            version: "0.2".into(),
        },
        objects: vec![FeatureObject {
            id: format!("lab/hdfs:1:{seq}:0"),
            class_id: 0,
            label: "person".into(),
            score: 0.7,
            bbox: [0.1, 0.1, 0.3, 0.6],
            verifier: None,
            shadow: None,
            embedding: vec![seq as f32; 1280],
        }],
        frame_embedding: Some(vec![0.5; 1280]),
    };
    for _replay in 0..2 {
        let mut w = TableWriter::new(
            &config,
            std::sync::Arc::new(camfleet_shared::clock::SystemClock),
        );
        for seq in 0..4 {
            w.add_features(&record(seq));
        }
        rt.block_on(w.flush(&archive)).unwrap();
    }
    let cam = camfleet_shared::CameraId::new("lab/hdfs").unwrap();
    let rows = rt
        .block_on(dataset::load_detections(&archive, Some(&cam), None, None))
        .unwrap();
    assert_eq!(rows.len(), 4);
    let labelled = rt
        .block_on(dataset::load_labelled(&archive, Some(&cam), None, None))
        .unwrap();
    assert_eq!(labelled.len(), 4, "still for 1.5 s >= 1 s: hard negatives");
    let listing = services.hdfs_shell(&["-ls", &format!("{base}/lab/hdfs/2025/11/21/22")]);
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["detections.parquet", "frames.parquet", "labels.parquet"],
        "{listing}"
    );
    services.hdfs_shell(&["-rm", "-r", "-f", &base]);
}

fn toml_embedding(text: &str) -> camfleet_shared::config::EmbeddingConfig {
    let c = CollectorConfig::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"k:9092\"\n[archive]\nroot = \"/a\"\n[inference]\nmodel = \"m.toml\"\n[inference.embedding]\n{text}\n"
    ))
    .unwrap();
    c.inference.unwrap().embedding.unwrap()
}
