//! Issue 11's scene model end to end, trained on the clip itself (real
//! Kafka, ONNX Runtime, the SSDLite backbone, the real binaries): the
//! learning clip's normal operation (poster + walker, no black) streams
//! through a collector that samples whole-frame embeddings into the frames
//! table; `camfleet-collector train` fits the scene model on that table and
//! promotes it on its held-out frames; the running collector puts it in force
//! without a restart; then the clip with a black (covered) section in the
//! middle raises `tampered` on `camfleet.events.v1` once, in the black
//! section, and ends it once the picture is back, with no `scene_changed`.

use camfleet_collector::archive::AnyArchive;
use camfleet_collector::learn::dataset;
use camfleet_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_scene_model_trained_on_the_clip_raises_tampered_once_when_covered() {
    let run = Scenario::new("scene", 1);
    let [detections, events, features, labels] = ["detections", "events", "features", "labels"]
        .map(|t| run.services.fresh_topic(&format!("scene-{t}"), 1));
    let photos = env_path("CAMFLEET_PHOTOS");
    // Normal operation: 12 s of the scene alone.
    let normal_y4m = run.dir.path().join("normal.y4m");
    learning_clip::build_covered(&photos, 12, 0, 0, &normal_y4m);
    // The same scene, covered for 3 s after 5 s, then uncovered for 4 s
    // (the walker stays within the positions the model saw).
    let covered_y4m = run.dir.path().join("covered.y4m");
    let covered = learning_clip::build_covered(&photos, 5, 3, 4, &covered_y4m);

    let root = run.dir.path().join("archive");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Every inferred picture is sampled (5 per second), crops are not
    // embedded (only the scene matters here).
    let config = format!(
        "{}\n[inference]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\ninfer_fps = 5\n\
         detections_topic = \"{detections}\"\nevents_topic = \"{events}\"\n\
         [inference.embedding]\nmodel = \"{}\"\nmodels_dir = \"{models}\"\nobjects = false\n\
         scene_period_s = 0.15\nfeatures_topic = \"{features}\"\nlabels_topic = \"{labels}\"\n\
         tables_flush_s = 1\n\
         [learning]\nenabled = true\nmin_labels = 10\npoll_interval_ms = 300\n\
         retrain_after_labels = 0\n",
        run.collector_config(root.to_str().unwrap()),
        repo.join("collector/models/nanodet-g.toml").display(),
        repo.join("collector/models/ssdlite-backbone.toml")
            .display(),
        models = env_path("CAMFLEET_MODELS").display(),
    );
    let collector = run.spawn("collector", "camfleet-collector", &config);
    let config_file = run.dir.path().join("collector.toml");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(binary("camfleet-collector"));
        cmd.args(args).arg("--config").arg(&config_file);
        logged_output(&mut cmd, &args.join(" "))
    };

    // Pass 1: normal operation fills the frames table.
    run.spawn(
        "agent",
        "camfleet-agent",
        &learning_clip::agent_config(&run, "lab/scene", &normal_y4m),
    )
    .wait_success(Duration::from_secs(120));
    let cam = camfleet_shared::CameraId::new("lab/scene").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let archive = rt
        .block_on(AnyArchive::open(root.to_str().unwrap()))
        .unwrap();
    // All of it: the collector may still be inferring the pass's last
    // pictures (the walker furthest right), and a model trained without
    // them would call them a changed scene. Done when the table stops
    // growing.
    let frames = || {
        rt.block_on(dataset::load_scene_embeddings(
            &archive,
            Some(&cam),
            None,
            None,
        ))
        .unwrap()
        .len()
    };
    let mut seen = (0, 0);
    wait_until(
        Duration::from_secs(90),
        "the normal pass's sampled frames in the frames table, no longer growing",
        || {
            std::thread::sleep(Duration::from_secs(1));
            let n = frames();
            seen = if n == seen.0 { (n, seen.1 + 1) } else { (n, 0) };
            n >= 45 && seen.1 >= 3
        },
    );
    // Train on that table: the scene model passes its held-out frames and
    // is promoted (no labels: no verifier, said so).
    let out = cli(&["train", "--camera", "lab/scene"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no verifier trained"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("scene@lab@scene "))
        .unwrap_or_else(|| panic!("no scene model line: {stdout}"));
    assert!(line.contains(": promoted:"), "{stdout}");
    let version = line["scene@lab@scene ".len()..]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    collector.wait_log(
        Duration::from_secs(30),
        "the running collector puts the scene model in force",
        |log| log.contains("model in force") && log.contains("scene@lab@scene"),
    );
    let show = cli(&["model", "show", "scene@lab@scene", &version]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("held-out gate: better") && shown.contains("false alarm rate"),
        "{shown}"
    );

    // Pass 2: covered in the middle.
    run.spawn(
        "agent",
        "camfleet-agent",
        &learning_clip::agent_config(&run, "lab/scene", &covered_y4m),
    )
    .wait_success(Duration::from_secs(120));
    let scene_events = |e: &serde_json::Value| {
        e["epoch"] == 2 && (e["kind"] == "tampered" || e["kind"] == "scene_changed")
    };
    let all = read_json(&run.services, &events, |e| {
        e.iter().any(|e| scene_events(e) && e["phase"] == "ended")
    });
    let evs: Vec<&serde_json::Value> = all.iter().filter(|e| scene_events(e)).collect();
    eprintln!("scene events of the covered pass: {evs:?}");
    let phases: Vec<(&str, &str)> = evs
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["phase"].as_str().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [("tampered", "started"), ("tampered", "ended")],
        "one episode, tampered (black), no scene_changed"
    );
    // Sequence numbers go on across the agent's runs: the covered pass
    // starts at the first seq of its epoch (its first inferred picture is
    // that frame or the next).
    let records = read_json(&run.services, &detections, |r| {
        r.iter().any(|r| r["epoch"] == 2)
    });
    let base = records
        .iter()
        .filter(|r| r["epoch"] == 2)
        .filter_map(|r| r["seq"].as_u64())
        .min()
        .unwrap();
    let seq = |i: usize| evs[i]["seq"].as_u64().unwrap();
    let (black_from, black_to) = (
        base + covered.scene_frames as u64,
        base + (covered.scene_frames + covered.black_frames) as u64,
    );
    assert!(
        (black_from..black_to).contains(&seq(0)),
        "raised in the black section ({black_from}..{black_to}), at {}",
        seq(0)
    );
    assert!(
        seq(1) >= black_to,
        "ended once the picture is back (from {black_to}), at {}",
        seq(1)
    );
    // Pass 1 ran without the model: nothing scene-related there.
    assert!(
        all.iter()
            .filter(|e| e["epoch"] == 1)
            .all(|e| e["kind"] != "tampered" && e["kind"] != "scene_changed"),
        "{all:?}"
    );
}
