//! Issue 11, ops labels from the page, end to end on real Kafka, real ONNX
//! Runtime, the real detector and backbone: the learning clip
//! (tests/src/learning_clip.rs) streamed by the agent into
//! `camfleet-collector run` with `[inference.embedding]`, `[live]` and
//! `[http.auth]`.
//!
//! * `POST /api/labels` publishes exactly what `camfleet-collector label`
//!   does (same record, filed as an `ops` label); a malformed or unknown
//!   id and a bad body are refused with a JSON error naming why, and
//!   publish nothing; without credentials the answer is 401 and leaks
//!   nothing;
//! * in Chromium (tests/browser/live_page.cjs, mode `label`) a click on a
//!   real detection's box and on "false" lands that label on the topic.
//!   Screenshot: `target/test-artifacts/learning-page-label.png`.

use camfleet_collector::learn::{dataset, features::LabelSource};
use camfleet_shared::config::CollectorConfig;
use camfleet_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CAMERA: &str = "lab/page";
const TOKEN: &str = "tok-labels-0123456789abcdef";

fn artifacts() -> PathBuf {
    let dir = binary("camfleet-collector")
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `POST /api/labels` with `body`; `auth` is a curl argument pair or none.
fn post_label(addr: &str, body: &str, auth: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .args(auth)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{addr}/api/labels"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl status line");
    (code.trim().parse().unwrap(), body.to_string())
}

/// Every record on `topic` so far (reads to the end, 10 s at most idle).
fn all_records(s: &Services, topic: &str) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", format!("{topic}.all-{}", rand_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("{topic}: {e}"),
            None => {}
        }
    }
    panic!("{topic}: no end of partition within 30 s");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs the page driver in `label` mode; returns its JSON.
fn drive_label(addr: &str) -> serde_json::Value {
    let web = env_path("CAMFLEET_WEB");
    let out = Command::new("timeout")
        .args(["150", "node"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/browser/live_page.cjs"
        ))
        .arg(format!("http://{addr}/?camera={CAMERA}"))
        .arg(CAMERA)
        .arg(artifacts().join("learning-page-label.png"))
        .args(["1", TOKEN])
        .env("CAMFLEET_WEB", web)
        .env("CAMFLEET_DRIVE", "label")
        .output()
        .expect("node (Debian) runs the page driver");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "driver output {text:?} ({e}); stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "driver: {v}"
    );
    v
}

#[test]
fn learning_page_labels_publish_what_the_cli_does_and_spark_reads_the_tables() {
    let run = Scenario::new("learnpage", 1);
    let topics = ["detections", "events", "features", "labels"]
        .map(|t| run.services.fresh_topic(&format!("learnpage-{t}"), 1));
    let [detections, events, features, labels] = &topics;
    let y4m = run.dir.path().join("learning.y4m");
    // Long enough for the browser to find a box on the moving video.
    learning_clip::build(&env_path("CAMFLEET_PHOTOS"), 40, 1, &y4m);

    let root = run.dir.path().join("archive");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let addr = free_local_addr();
    let tokens = run.dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let vendor = env_path("CAMFLEET_WEB").join("node_modules/hls.js/dist");
    let config_text = format!(
        "{}\n[inference]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\ninfer_fps = 5\n\
         detections_topic = \"{detections}\"\nevents_topic = \"{events}\"\n\
         [inference.embedding]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\nscene_period_s = 0.5\n\
         features_topic = \"{features}\"\nlabels_topic = \"{labels}\"\ntables_flush_s = 1\n\
         stillness_iou = 0.7\nstillness_min_s = 3\nstillness_gap_s = 2\n\
         [live]\ndetections_topic = \"{detections}\"\n\
         [learning]\nenabled = false\nmin_labels = 20\n",
        run.collector_config(root.to_str().unwrap()).replace(
            "[http]\nlisten = \"\"\n",
            &format!(
                "[http]\nlisten = \"{addr}\"\nweb_vendor_dir = \"{}\"\n[http.auth]\ntoken_file = \"{}\"\n",
                vendor.display(),
                tokens.display()
            ),
        ),
        repo.join("collector/models/nanodet-g.toml").display(),
        repo.join("collector/models/ssdlite-backbone.toml")
            .display(),
        models = env_path("CAMFLEET_MODELS").display(),
    );
    let config_file = run.dir.path().join("collector.toml");
    std::fs::write(&config_file, &config_text).unwrap();
    let config = CollectorConfig::from_toml(&config_text).unwrap();
    let collector = run.spawn("collector", "camfleet-collector", &config_text);
    wait_until(Duration::from_secs(60), "the collector's HTTP", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let agent = run.spawn(
        "agent",
        "camfleet-agent",
        &learning_clip::agent_config(&run, CAMERA, &y4m),
    );

    // A published detection, labelled over HTTP as soon as it is out: the
    // tables may not hold it yet (they lag by one flush); the route waits.
    let records = read_json(&run.services, detections, |r| {
        r.iter().any(|r| {
            r["objects"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["id"].is_string()))
        })
    });
    let first = records
        .iter()
        .find(|r| {
            r["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"].is_string())
        })
        .unwrap();
    let id = first["objects"][0]["id"].as_str().unwrap().to_string();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let auth = ["-H", bearer.as_str()];

    // Refusals first: nothing may be published by them.
    let (status, body) = post_label(&addr, &format!(r#"{{"id":"{id}","real":false}}"#), &[]);
    assert_eq!(
        (status, body.as_str()),
        (401, "unauthorized\n"),
        "no credentials"
    );
    let (status, body) = post_label(
        &addr,
        &format!(r#"{{"id":"{id}","real":false}}"#),
        &["-H", "Authorization: Bearer tok-labels-0123456789abcdeX"],
    );
    assert_eq!(
        (status, body.as_str()),
        (401, "unauthorized\n"),
        "a wrong token"
    );
    let refusals = [
        (
            r#"{"id":"lab/page:1:2","real":true}"#,
            400,
            "<site>/<camera>:<epoch>:<seq>:<index>",
        ),
        (
            r#"{"id":"lab/page:x:2:0","real":true}"#,
            400,
            "epoch \"x\" is not a number",
        ),
        (
            r#"{"id":"lab/page:7:999999:0","real":true}"#,
            404,
            "no detection lab/page:7:999999:0",
        ),
        (r#"{"id":"lab/page:1:2:0"}"#, 400, "missing field `real`"),
        (
            r#"{"id":"lab/page:1:2:0","real":true,"by":"me"}"#,
            400,
            "unknown field `by`",
        ),
        ("not json", 400, "body must be JSON"),
    ];
    for (body, want_status, want_text) in refusals {
        let (status, answer) = post_label(&addr, body, &auth);
        assert_eq!(status, want_status, "{body}: {answer}");
        let j: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{body}: not JSON ({e}): {answer}"));
        assert!(
            j["error"].as_str().unwrap().contains(want_text),
            "{body}: {answer}"
        );
    }
    assert!(
        all_records(&run.services, labels).is_empty(),
        "refusals publish nothing"
    );

    let (status, answer) = post_label(&addr, &format!(r#"{{"id":"{id}","real":false}}"#), &auth);
    assert_eq!(status, 200, "{answer}");
    let done: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        done,
        serde_json::json!({"id": id, "camera": CAMERA, "real": false, "topic": labels})
    );
    let published = all_records(&run.services, labels);
    assert_eq!(published.len(), 1, "{published:?}");
    let l = &published[0];
    assert_eq!(l["schema"], "camfleet.labels.v1");
    assert_eq!(
        (
            &l["detection_id"],
            &l["camera"],
            &l["real"],
            &l["capture_us"]
        ),
        (
            &serde_json::json!(id),
            &serde_json::json!(CAMERA),
            &serde_json::json!(false),
            &first["capture_us"]
        )
    );

    // The CLI on the same detection publishes the same record (its
    // labelling time aside): one function behind both.
    let out = Command::new(binary("camfleet-collector"))
        .args(["label", &id, "false", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = all_records(&run.services, labels);
    assert_eq!(published.len(), 2, "{published:?}");
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("labelled_at_us");
        v
    };
    assert_eq!(strip(&published[0]), strip(&published[1]));

    // The page in Chromium: click a detection's box, then "false".
    let v = drive_label(&addr);
    let label = &v["label"];
    // A box when inference keeps up with the video, else the list.
    eprintln!("selected via {}: {}", label["via"], label["clicked"]);
    assert!(
        ["box", "list"].contains(&label["via"].as_str().unwrap()),
        "{label}"
    );
    let results = label["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{label}");
    let clicked = label["selected"].as_str().unwrap().to_string();
    assert!(clicked.starts_with("lab/page:"), "{label}");
    assert_eq!(
        results[0],
        serde_json::json!({"id": clicked, "real": false, "ok": true, "status": 200, "topic": labels}),
        "{label}"
    );
    assert!(
        label["status"]
            .as_str()
            .unwrap()
            .starts_with("labelled false"),
        "{label}"
    );
    assert!(
        label["panel"].as_str().unwrap().contains(&clicked),
        "{label}"
    );
    assert!(
        label["onScreen"].as_str().unwrap().contains("person"),
        "{label}"
    );
    let published = all_records(&run.services, labels);
    assert_eq!(published.len(), 3, "{published:?}");
    assert_eq!(
        (&published[2]["detection_id"], &published[2]["real"]),
        (&serde_json::json!(clicked), &serde_json::json!(false))
    );
    let shot = artifacts().join("learning-page-label.png");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // The table writer files the page's labels as ops labels.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let archive = rt
        .block_on(camfleet_collector::archive::AnyArchive::open(
            &config.archive.root,
        ))
        .unwrap();
    let cam = camfleet_shared::CameraId::new(CAMERA).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the ops labels in the tables",
        || {
            let labelled = rt
                .block_on(dataset::load_labelled(&archive, Some(&cam), None, None))
                .unwrap();
            [&id, &clicked].iter().all(|want| {
                labelled.iter().any(|l| {
                    &&l.features.detection_id == want && !l.real && l.source == LabelSource::Ops
                })
            })
        },
    );

    // Spark over the archive as the collector wrote it.
    agent.wait_success(Duration::from_secs(120));
    spark_reads_the_hourly_tables_and_trains(
        &run,
        &rt,
        &archive,
        &config_file,
        &addr,
        detections,
        &[&id, &clicked],
    );
    drop(collector);
}

/// The walker's detections labelled real over HTTP, the poster's false by
/// the stillness rule (and ops, above); then pyspark reads every hour's
/// three tables by glob, its counts equal what the collector published,
/// MLlib fits the verifier on the joined rows (built as `verifier_input`
/// builds them: ONNX Runtime on our rows gives Spark's probabilities), and
/// the registry takes the model through `model import` and the gate.
fn spark_reads_the_hourly_tables_and_trains(
    run: &Scenario,
    rt: &tokio::runtime::Runtime,
    archive: &camfleet_collector::archive::AnyArchive,
    config_file: &Path,
    addr: &str,
    detections: &str,
    labelled_false: &[&String],
) {
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let cam = camfleet_shared::CameraId::new(CAMERA).unwrap();
    // Everything published, and the tables holding all of it (the agent is
    // done; the collector finishes its last pictures and flushes).
    let mut published = std::collections::BTreeMap::new();
    wait_until(
        Duration::from_secs(60),
        "the tables hold every published detection",
        || {
            published.clear();
            for r in all_records(&run.services, detections) {
                for o in r["objects"].as_array().unwrap() {
                    published.insert(o["id"].as_str().unwrap().to_string(), o.clone());
                }
            }
            let rows = rt
                .block_on(dataset::load_detections(archive, Some(&cam), None, None))
                .unwrap();
            !published.is_empty() && rows.len() == published.len()
        },
    );
    let walker: Vec<&String> = published
        .iter()
        .filter(|(id, o)| {
            centre_x(o) > 0.3 && o["label"] == "person" && !labelled_false.contains(id)
        })
        .map(|(id, _)| id)
        .collect();
    assert!(
        walker.len() >= 60,
        "the walker is detected on most pictures: {}",
        walker.len()
    );
    for id in walker.iter().step_by(2) {
        let (status, answer) = post_label(
            addr,
            &format!(r#"{{"id":"{id}","real":true}}"#),
            &["-H", &bearer],
        );
        assert_eq!(status, 200, "{answer}");
    }
    let real_labels = walker.iter().step_by(2).count();
    let labelled = {
        let mut last = 0;
        let mut labelled = Vec::new();
        wait_until(Duration::from_secs(30), "the labels table settles", || {
            labelled = rt
                .block_on(dataset::load_labelled(archive, Some(&cam), None, None))
                .unwrap();
            let real = labelled.iter().filter(|l| l.real).count();
            let settled = real == real_labels && labelled.len() == last;
            last = labelled.len();
            settled
        });
        labelled
    };
    let frames = rt
        .block_on(dataset::load_scene_embeddings(
            archive,
            Some(&cam),
            None,
            None,
        ))
        .unwrap();

    let dir = run.dir.path();
    let root = dir.join("archive");
    let (out_dir, export, report, predictions) = (
        dir.join("spark-model"),
        dir.join("spark-labelled"),
        dir.join("spark-report.json"),
        dir.join("spark-predictions.json"),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spark-train-verifier.py");
    let started = Instant::now();
    let out = Command::new(env_path("CAMFLEET_ANALYTICS_PYTHON"))
        .arg(&script)
        .arg("--archive")
        .arg(&root)
        .arg(&out_dir)
        .arg("--export-labelled")
        .arg(&export)
        .arg("--report")
        .arg(&report)
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
    eprintln!(
        "spark read and trained in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Spark's counts are the collector's.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    eprintln!("spark report: {report}");
    let mut per_class = std::collections::BTreeMap::<String, u64>::new();
    for o in published.values() {
        *per_class
            .entry(format!("{CAMERA}|{}", o["label"].as_str().unwrap()))
            .or_default() += 1;
    }
    assert_eq!(report["detections"], serde_json::json!(per_class));
    assert_eq!(report["detections_total"], published.len());
    assert_eq!(report["labelled"], labelled.len());
    let mut by = std::collections::BTreeMap::<String, u64>::new();
    for l in &labelled {
        let source = if l.source == LabelSource::Ops {
            "ops"
        } else {
            "stillness"
        };
        *by.entry(format!("{source}|{}", l.real)).or_default() += 1;
    }
    assert_eq!(report["labelled_by"], serde_json::json!(by));
    assert_eq!(by[&"ops|true".to_string()], real_labels as u64);
    assert!(by[&"stillness|false".to_string()] >= 30, "{by:?}");
    let holdout = labelled
        .iter()
        .filter(|l| camfleet_collector::learn::evaluate::is_holdout(&l.features.detection_id, 0.25))
        .count();
    assert_eq!(report["holdout"], holdout);
    assert_eq!(
        report["frames"],
        serde_json::json!({ CAMERA: frames.len() })
    );

    // Spark's rows are ours: ONNX Runtime on `verifier_input` gives Spark's
    // probabilities for every detection it fitted on.
    let spark: std::collections::HashMap<String, f64> =
        serde_json::from_slice(&std::fs::read(&predictions).unwrap()).unwrap();
    assert_eq!(
        spark.len(),
        labelled.len() - holdout,
        "the training split only"
    );
    let manifest = std::fs::read_to_string(out_dir.join("manifest.toml")).unwrap();
    let onnx = std::fs::read(out_dir.join("model.onnx")).unwrap();
    let ort = std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from);
    let v = camfleet_collector::learn::runtime::OrtVerifier::load(
        "verifier@lab@page",
        "spark",
        &manifest,
        &onnx,
        ort.as_deref(),
    )
    .unwrap();
    let train: Vec<_> = labelled
        .iter()
        .filter(|l| spark.contains_key(&l.features.detection_id))
        .collect();
    assert_eq!(train.len(), spark.len());
    let rows: Vec<Vec<f32>> = train
        .iter()
        .map(|l| camfleet_collector::learn::features::verifier_input(&l.features, 80))
        .collect();
    let ours = camfleet_collector::learn::model::Verifier::probabilities(&v, &rows).unwrap();
    let worst = train
        .iter()
        .zip(&ours)
        .map(|(l, p)| (spark[&l.features.detection_id] - *p as f64).abs())
        .fold(0f64, f64::max);
    eprintln!("max |spark - ort| over {} rows = {worst:e}", rows.len());
    assert!(worst <= 1e-4, "max |spark - ort| = {worst}");

    // Through the registry's front door: import, then the gate on the
    // held-out split of the exported rows.
    let cli = |args: &[&str]| {
        let out = Command::new(binary("camfleet-collector"))
            .args(args)
            .arg("--config")
            .arg(config_file)
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
        "verifier@lab@page",
        out_dir.to_str().unwrap(),
    ]);
    let version = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let out = cli(&[
        "model",
        "promote",
        "verifier@lab@page",
        &version,
        "--labels",
        export.to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("current {version}")), "{out}");
    let show = cli(&["model", "show", "verifier@lab@page", &version]);
    assert!(
        show.contains("\"detector alone\"") && show.contains("\"better\": true"),
        "{show}"
    );
}
