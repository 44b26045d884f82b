//! Agent -> Kafka -> collector with inference, on real ONNX Runtime and the
//! real NanoDet-g weights: a clip made of a real photograph, a black
//! section, and the photograph again. The person is found where it is on
//! the photo frames, nothing on the black ones; the black section raises one
//! `dark` event and its end clears it; every detection record validates
//! against docs/detections.schema.json with Python's jsonschema (a peer).

use camfleet_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/setup and source .services/env (scripts/test does)")
    }))
}

/// photo (3 s) + black (4 s) + photo (3 s) at 10 fps, with a little
/// temporal noise on the photo so it is not a frozen picture.
fn clip(photo: &Path, out: &Path) {
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-loop",
            "1",
            "-t",
            "3",
            "-i",
        ])
        .arg(photo)
        .args([
            "-f",
            "lavfi",
            "-t",
            "4",
            "-i",
            "color=black:s=512x512:r=10",
            "-loop",
            "1",
            "-t",
            "3",
            "-i",
        ])
        .arg(photo)
        .args([
            "-filter_complex",
            "[0:v]fps=10,noise=alls=6:allf=t,format=yuv420p[a];[1:v]format=yuv420p[b];\
             [2:v]fps=10,noise=alls=6:allf=t,format=yuv420p[c];[a][b][c]concat=n=3:v=1:a=0",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not build the clip");
}

/// The photo alone for `seconds` at 10 fps, with temporal noise.
fn photo_clip(photo: &Path, seconds: u32, out: &Path) {
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-loop",
            "1",
            "-t",
        ])
        .arg(seconds.to_string())
        .arg("-i")
        .arg(photo)
        .args(["-vf", "fps=10,noise=alls=6:allf=t,format=yuv420p"])
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not build the clip");
}

/// The scenario's collector config, archiving under its directory.
fn collector_with_archive(run: &Scenario) -> String {
    run.collector_config(run.dir.path().join("archive").to_str().unwrap())
}

/// `config` plus an `[inference]` table: the default model from the cache,
/// `infer_fps`, and the scenario's own topics.
fn with_inference(config: String, infer_fps: u32, detections: &str, events: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/models/nanodet-g.toml");
    format!(
        "{config}\n[inference]\nmodel = \"{}\"\nmodels_dir = \"{}\"\ninfer_fps = {infer_fps}\n\
         detections_topic = \"{detections}\"\nevents_topic = \"{events}\"\n",
        manifest.display(),
        env_path("CAMFLEET_MODELS").display(),
    )
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn inference_finds_the_person_and_a_black_section_raises_dark_once() {
    let run = Scenario::new("infer", 1);
    let detections = run.services.fresh_topic("infer-detections", 1);
    let events = run.services.fresh_topic("infer-events", 1);
    let y4m = run.dir.path().join("astronaut.y4m");
    clip(&env_path("CAMFLEET_PHOTOS").join("astronaut.png"), &y4m);

    let agent = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[[camera]]
id = "lab/astronaut"
source = {{ kind = "y4m", path = "{y4m}", unpaced = true }}
encoder = {{ bitrate_kbps = 1500, keyframe_interval_frames = 10 }}
"#,
        data = run.dir.path().join("agent-data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
        y4m = y4m.display(),
    );
    run.spawn("agent", "camfleet-agent", &agent)
        .wait_success(Duration::from_secs(60));

    let collector = with_inference(collector_with_archive(&run), 5, &detections, &events);
    let collector = run.spawn("collector", "camfleet-collector", &collector);

    // 100 frames at 10 fps, inferred at 5 fps: 50 records.
    let records = read_json_logged(&run.services, &detections, &collector, |r| r.len() >= 50);
    assert_eq!(records.len(), 50);
    let astronaut = [18.0 / 512.0, 14.0 / 512.0, 362.0 / 512.0, 1.0];
    for r in &records {
        let seq = r["seq"].as_u64().unwrap();
        let people: Vec<[f64; 4]> = r["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["label"] == "person")
            .map(|o| {
                let b = &o["box"];
                ["x_min", "y_min", "x_max", "y_max"].map(|k| b[k].as_f64().unwrap())
            })
            .collect();
        if (30..70).contains(&seq) {
            assert!(
                r["objects"].as_array().unwrap().is_empty(),
                "black frame {seq}: {r}"
            );
        } else {
            let best = people
                .iter()
                .map(|b| iou(*b, astronaut))
                .fold(0.0, f64::max);
            assert!(best >= 0.5, "frame {seq}: person IoU {best:.2}: {r}");
            assert_eq!(r["counts"]["person"], 1, "{r}");
        }
        assert_eq!(r["model"]["name"], "nanodet-g");
        assert_eq!(
            (r["width"].as_u64(), r["height"].as_u64()),
            (Some(512), Some(512))
        );
    }

    // The schema, checked by an independent validator.
    let records_file = run.dir.path().join("records.json");
    std::fs::write(&records_file, serde_json::to_string(&records).unwrap()).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/detections.schema.json");
    let check = Command::new(env_path("CAMFLEET_TOOLS_PYTHON"))
        .args([
            "-c",
            "import json,sys,jsonschema\n\
             s=json.load(open(sys.argv[1])); v=jsonschema.Draft202012Validator(s)\n\
             v.check_schema(s)\n\
             for r in json.load(open(sys.argv[2])): v.validate(r)\n\
             print('valid')",
        ])
        .arg(&schema)
        .arg(&records_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Events: the person appears, leaves during the black section and
    // appears again; dark starts once and ends once.
    let evs = read_json_logged(&run.services, &events, &collector, |e| {
        e.iter().filter(|e| e["kind"] == "dark").count() >= 2
            && e.iter().filter(|e| e["kind"] == "object_appeared").count() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let summary: Vec<(String, String, u64)> = evs
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["phase"]
                    .as_str()
                    .or(e["label"].as_str())
                    .unwrap_or("")
                    .to_string(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let of = |kind: &str| summary.iter().filter(|e| e.0 == kind).collect::<Vec<_>>();
    let dark = of("dark");
    assert_eq!(dark.len(), 2, "{summary:?}");
    assert_eq!(dark[0].1, "started");
    assert!(
        (50..70).contains(&dark[0].2),
        "dark after 2 s of black: {summary:?}"
    );
    assert_eq!(dark[1].1, "ended");
    assert!(
        (90..100).contains(&dark[1].2),
        "cleared after 2 s of picture: {summary:?}"
    );
    assert_eq!(of("object_appeared").len(), 2, "{summary:?}");
    assert_eq!(of("object_left").len(), 1, "{summary:?}");
    assert!(
        of("frozen").is_empty() && of("covered").is_empty(),
        "{summary:?}"
    );

    collector.signal("TERM");
    let cs = collector.wait_summary(Duration::from_secs(20));
    assert_eq!(cs["frames_archived"], 100, "{cs}");
}

/// A record with valid headers and a garbage H.264 value mid-stream:
/// inference skips to the next IDR (counted on /metrics) and goes on; the
/// archive keeps every frame.
#[test]
fn inference_recovers_at_the_next_idr_after_corrupt_h264() {
    use camfleet_agent::encode::H264Encoder;
    use camfleet_agent::sink::kafka::KafkaSink;
    use camfleet_agent::sink::FrameSink;
    use camfleet_agent::source::test_pattern::render;
    use camfleet_agent::source::VideoFormat;
    use camfleet_shared::config::{AgentConfig, EncoderConfig};
    use camfleet_shared::wire::{Codec, FrameMeta, Rational};

    let run = Scenario::new("infer-corrupt", 1);
    let detections = run.services.fresh_topic("corrupt-detections", 1);
    let events = run.services.fresh_topic("corrupt-events", 1);
    let agent = AgentConfig::from_toml(&format!(
        "data_dir = \"/unused\"\n[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\n\
         [[camera]]\nid = \"t/corrupt\"\nsource = {{ kind = \"test_pattern\", width = 320, height = 192 }}\n",
        run.services.kafka, run.topic
    ))
    .unwrap();
    let format = VideoFormat {
        width: 320,
        height: 192,
        fps: Rational::new(30, 1).unwrap(),
    };
    let mut encoder = H264Encoder::new(
        format,
        &EncoderConfig {
            bitrate_kbps: 500,
            keyframe_interval_frames: 10,
            ..EncoderConfig::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = KafkaSink::new(&agent.kafka).unwrap();
    rt.block_on(async {
        let mut acks = Vec::new();
        for i in 0..60u64 {
            let out = encoder.encode(i, &render(320, 192, i)).unwrap();
            let payload = if i == 23 {
                // A start code, a non-IDR slice header byte, then noise.
                let mut garbage = vec![0, 0, 0, 1, 0x41];
                garbage.extend((0..600u32).map(|k| (k.wrapping_mul(2654435761) >> 13) as u8));
                garbage
            } else {
                out.annex_b
            };
            let meta = FrameMeta {
                camera: camfleet_shared::CameraId::new("t/corrupt").unwrap(),
                seq: i,
                capture_us: 1_700_000_000_000_000 + i * 33_333,
                pts_90k: i * 3000,
                keyframe: out.keyframe,
                width: 320,
                height: 192,
                fps: format.fps,
                codec: Codec::H264,
                epoch: 1,
            };
            acks.push(sink.enqueue(&meta, &payload, &[]).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
    });

    let metrics = free_local_addr();
    let config = with_inference(
        collector_with_archive(&run).replace("listen = \"\"", &format!("listen = \"{metrics}\"")),
        30,
        &detections,
        &events,
    );
    let collector = run.spawn("collector", "camfleet-collector", &config);
    // Every frame but 23 (corrupt) and 24-29 (waiting for the IDR at 30).
    let records = read_json_logged(&run.services, &detections, &collector, |r| r.len() >= 53);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (0..23).chain(30..60).collect();
    assert_eq!(seqs, want);
    let text = http_get(&metrics, "/metrics");
    let skipped = r#"camfleet_collector_inference_frames_skipped_total{camera="t/corrupt",reason="undecodable"} 7"#;
    assert!(text.lines().any(|l| l == skipped), "{text}");
    collector.signal("TERM");
    let cs = collector.wait_summary(Duration::from_secs(20));
    assert_eq!(cs["frames_archived"], 60, "{cs}");
    assert!(collector_log_mentions(&run, "undecodable H.264"));
}

fn collector_log_mentions(run: &Scenario, what: &str) -> bool {
    std::fs::read_to_string(run.dir.path().join("collector.log"))
        .unwrap_or_default()
        .contains(what)
}

/// Two collector instances in one group, each camera on its own partition:
/// every camera's detections come from one instance at a time (no picture
/// inferred twice); SIGKILL one, the other takes its partition over and
/// inference goes on, repeating at most what the dead one had not committed;
/// the person is announced again at most once (docs/events.md).
#[test]
fn inference_two_collectors_share_the_cameras_and_one_takes_over() {
    let run = Scenario::new("infer-group", 2);
    let detections = run.services.fresh_topic("group-detections", 1);
    let events = run.services.fresh_topic("group-events", 1);
    let y4m = run.dir.path().join("astronaut.y4m");
    photo_clip(&env_path("CAMFLEET_PHOTOS").join("astronaut.png"), 10, &y4m);
    // Two camera ids librdkafka's partitioner (CRC-32 of the key) puts on
    // partitions 0 and 1.
    let on = |p: u32| {
        (0..)
            .map(|i| format!("lab/cam{i}"))
            .find(|id| crc32fast::hash(id.as_bytes()) % 2 == p)
            .unwrap()
    };
    let cams = [on(0), on(1)];
    let mut agent = format!(
        "data_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\n[http]\nlisten = \"\"\n",
        run.dir.path().join("agent-data").display(),
        run.services.kafka,
        run.topic
    );
    for cam in &cams {
        // 10 s clip looped 3 times, in real time: 30 s of video per camera.
        agent.push_str(&format!(
            "[[camera]]\nid = \"{cam}\"\nmax_frames = 300\nsource = {{ kind = \"y4m\", path = \"{}\", loop_file = true }}\nencoder = {{ bitrate_kbps = 800, keyframe_interval_frames = 10 }}\n",
            y4m.display()
        ));
    }
    let collector_config = with_inference(collector_with_archive(&run), 2, &detections, &events);
    let first = run.spawn("collector-1", "camfleet-collector", &collector_config);
    let second = run.spawn("collector-2", "camfleet-collector", &collector_config);
    let agent = run.spawn("agent", "camfleet-agent", &agent);
    // Both instances own a partition once the group has settled.
    for c in [&first, &second] {
        c.wait_log(Duration::from_secs(30), "a partition assigned", |l| {
            l.contains("partitions assigned") && !l.contains("parts=[]")
        });
    }
    std::thread::sleep(Duration::from_secs(8));
    first.signal("KILL");
    let summary = agent.wait_summary(Duration::from_secs(90));
    let _ = summary;

    // 30 s per camera at 2 inferences per second: 60 pictures each, the
    // first of every 5 frames (sampling is on a fixed grid of media time).
    let records = read_json_logged(&run.services, &detections, &second, |r| {
        cams.iter().all(|cam| {
            r.iter()
                .filter(|d| d["camera"] == cam.as_str())
                .any(|d| d["seq"] == 295)
        })
    });
    for cam in &cams {
        let seqs: Vec<u64> = records
            .iter()
            .filter(|d| d["camera"] == cam.as_str())
            .map(|d| d["seq"].as_u64().unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
        // Every sampled picture inferred (seq 0, 5, 10, ...), none missing,
        // none off the grid even across the take-over.
        let want: std::collections::BTreeSet<u64> = (0..300).step_by(5).collect();
        assert_eq!(distinct, want, "{cam}: {seqs:?}");
        // Repeats only from the take-over: at most the seconds between the
        // dead instance's last commit (segments of 1 s) and its death.
        let repeats = seqs.len() - distinct.len();
        assert!(
            repeats <= 6,
            "{cam}: {repeats} pictures inferred twice: {seqs:?}"
        );
    }
    let evs = read_json_logged(&run.services, &events, &second, |e| e.len() >= 2);
    for cam in &cams {
        let appeared = evs
            .iter()
            .filter(|e| {
                e["camera"] == cam.as_str()
                    && e["kind"] == "object_appeared"
                    && e["label"] == "person"
            })
            .count();
        assert!(
            (1..=2).contains(&appeared),
            "{cam}: person appeared {appeared} times: {evs:?}"
        );
    }
    second.signal("TERM");
    second.wait_summary(Duration::from_secs(20));
}
