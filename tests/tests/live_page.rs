//! The ops page in a real browser: Debian's chromium, headless, driven in
//! real time through the DevTools protocol (puppeteer-core,
//! tests/browser/live_page.cjs). The page comes from the collector, the
//! video from a paced test-pattern agent through Kafka, the detection
//! boxes from records on a detections topic. Screenshots are saved under
//! `target/test-artifacts/`.

use camfleet_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CAMERA: &str = "page/door";

fn web_dir() -> PathBuf {
    std::env::var("CAMFLEET_WEB")
        .map(PathBuf::from)
        .expect("CAMFLEET_WEB (from .services/env; scripts/setup installs it)")
}

fn artifacts() -> PathBuf {
    let dir = binary("camfleet-collector")
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Publishes one detection record (docs/detections.schema.json) per video
/// frame of the camera, as the inference processor would, until stopped.
fn feed_detections(
    kafka: String,
    video: String,
    detections: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("group.id", format!("{video}.detection-feeder"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&video]).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else {
                producer.poll(Duration::ZERO);
                continue;
            };
            let headers: Vec<(&str, Option<&[u8]>)> = msg
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            let Ok((meta, _)) = camfleet_shared::wire::parse(msg.key(), headers) else {
                continue;
            };
            let record = serde_json::json!({
                "schema": "camfleet.detections.v1",
                "camera": meta.camera.as_str(),
                "seq": meta.seq, "epoch": meta.epoch,
                "capture_us": meta.capture_us, "pts_90k": meta.pts_90k,
                "width": meta.width, "height": meta.height,
                "model": {"name": "test", "version": "1"},
                "objects": [{"id": format!("{}:{}:{}:0", meta.camera.as_str(), meta.epoch, meta.seq),
                    "label": "person", "class_id": 0, "score": 0.9,
                    "box": {"x_min": 0.3, "y_min": 0.3, "x_max": 0.7, "y_max": 0.9}}],
                "counts": {"person": 1},
                "inference_ms": 1.0
            })
            .to_string();
            let key = meta.camera.as_str().to_string();
            let _ = producer.send(BaseRecord::to(&detections).key(&key).payload(&record));
            producer.poll(Duration::ZERO);
            sent += 1;
        }
        let _ = producer.flush(Duration::from_secs(5));
        sent
    })
}

/// Runs the page driver; returns its JSON.
fn drive(url: &str, screenshot: &str, seconds: u32) -> serde_json::Value {
    drive_mode(url, CAMERA, screenshot, seconds, "")
}

/// Runs the page driver on `camera` in `mode` (`""` or `timeline`).
fn drive_mode(
    url: &str,
    camera: &str,
    screenshot: &str,
    seconds: u32,
    mode: &str,
) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["120", "node"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/browser/live_page.cjs"
        ))
        .args([url, camera])
        .arg(artifacts().join(screenshot))
        .arg(seconds.to_string())
        .env("CAMFLEET_WEB", web_dir())
        .env("CAMFLEET_DRIVE", mode)
        .env("CAMFLEET_LABEL_VIA", "box")
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

/// The video played in real time: time and decoded frames rose, the
/// picture is the test pattern (not black), its frame number moved on.
fn assert_played(v: &serde_json::Value, seconds: f64, path: &str) {
    let (a, b) = (&v["before"], &v["after"]);
    assert_eq!(b["path"], path, "{v}");
    let dt = b["currentTime"].as_f64().unwrap() - a["currentTime"].as_f64().unwrap();
    assert!(
        dt > seconds * 0.6,
        "currentTime rose {dt} s in {seconds} s: {b}"
    );
    let frames = b["frames"].as_u64().unwrap() - a["frames"].as_u64().unwrap();
    // 15 fps.
    assert!(
        frames as f64 > seconds * 15.0 * 0.6,
        "{frames} frames decoded: {b}"
    );
    assert_eq!(
        (b["width"].as_u64(), b["height"].as_u64()),
        (Some(320), Some(192))
    );
    let (mean, std) = (
        b["meanLuma"].as_f64().unwrap(),
        b["stdLuma"].as_f64().unwrap(),
    );
    assert!(
        mean > 40.0 && std > 20.0,
        "picture black or flat: mean {mean} std {std}"
    );
    let (fa, fb) = (a["frameNumber"].as_u64(), b["frameNumber"].as_u64());
    assert!(
        fa.is_some() && fb.is_some() && fb > fa,
        "barcode frame numbers {fa:?} -> {fb:?}"
    );
}

#[test]
fn live_page_plays_the_camera_in_chromium_via_hlsjs_and_native_hls_with_detection_boxes() {
    let run = Scenario::new("livepage", 1);
    let detections = run.services.fresh_topic("livepage-detections", 1);
    let addr = free_local_addr();
    let root = run.dir.path().join("archive");
    let vendor = web_dir().join("node_modules/hls.js/dist");
    let config = run.collector_config(root.to_str().unwrap()).replace(
        "[http]\nlisten = \"\"\n",
        &format!(
            "[http]\nlisten = \"{addr}\"\nweb_vendor_dir = \"{}\"\n[live]\ndetections_topic = \"{detections}\"\n",
            vendor.display()
        ),
    );
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    let _agent = run.agent(
        &PatternCamera {
            id: CAMERA,
            width: 320,
            height: 192,
            fps: 15,
            frames: 15 * 90,
            paced: true,
        },
        "",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_detections(
        run.services.kafka.clone(),
        run.topic.clone(),
        detections,
        stop.clone(),
    );
    wait_until(Duration::from_secs(45), "live playlist", || {
        std::net::TcpStream::connect(&addr).is_ok()
            && std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(format!("http://{addr}/live/page/door/index.m3u8"))
                .status()
                .is_ok_and(|s| s.success())
    });

    // hls.js (MSE) with LL-HLS: the page's default where MSE exists.
    let v = drive(
        &format!("http://{addr}/?camera={CAMERA}"),
        "live-page-hlsjs.png",
        4,
    );
    assert_played(&v, 4.0, "hls.js");
    assert_eq!(v["after"]["lowLatencyMode"], true);
    assert_eq!(v["after"]["detectionsAvailable"], true, "{}", v["after"]);
    assert!(
        v["after"]["boxesDrawn"].as_u64().unwrap() > 0,
        "no detection box drawn: {}",
        v["after"]
    );
    assert_eq!(v["after"]["errors"], serde_json::json!([]));

    // A click on a drawn box selects its detection; "false" asks the
    // collector, which has no [inference.embedding] here: the page shows
    // the refusal and why.
    let v = drive_mode(
        &format!("http://{addr}/?camera={CAMERA}"),
        CAMERA,
        "live-page-label-refused.png",
        1,
        "label",
    );
    let label = &v["label"];
    assert_eq!(label["via"], "box", "{label}");
    let selected = label["selected"].as_str().unwrap();
    assert!(selected.starts_with("page/door:"), "{label}");
    assert!(
        label["panel"].as_str().unwrap().contains(selected),
        "{label}"
    );
    assert_eq!(label["results"][0]["ok"], false, "{label}");
    assert_eq!(label["results"][0]["status"], 404, "{label}");
    assert!(
        label["status"]
            .as_str()
            .unwrap()
            .starts_with("not labelled: labels need [inference.embedding]"),
        "{label}"
    );

    // Chromium's native HLS, asked for explicitly: the other path.
    let v = drive(
        &format!("http://{addr}/?camera={CAMERA}&player=native"),
        "live-page-native.png",
        4,
    );
    assert_played(&v, 4.0, "native");

    // The archive of the last minutes, as VOD through hls.js.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = drive(
        &format!(
            "http://{addr}/?camera={CAMERA}&from={}&to={}",
            now - 600,
            now + 60
        ),
        "live-page-archive.png",
        3,
    );
    assert_played(&v, 3.0, "hls.js");
    // VOD starts at the archive's beginning: the camera's first frames.
    assert!(
        v["before"]["frameNumber"].as_u64().unwrap() < 15 * 10,
        "{}",
        v["before"]
    );

    stop.store(true, Ordering::Relaxed);
    assert!(feeder.join().unwrap() > 0);
    let shot = artifacts().join("live-page-hlsjs.png");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
}

/// The archive timeline under a camera: two runs of the camera 4 s apart
/// are two recorded stretches with a gap drawn between them; a click on
/// the first plays the archive from there (currentTime and decoded frames
/// rise, the picture is the camera's first frames); the export link
/// downloads one .ts of both runs that ffprobe reads as 6 s.
#[test]
fn live_page_archive_timeline_shows_the_gap_plays_a_click_and_exports() {
    const YARD: &str = "page/yard";
    let run = Scenario::new("timeline", 1);
    let (host, port) = mqtt_plain();
    let prefix = format!("cf-{}", run.topic.replace('.', "-"));
    let addr = free_local_addr();
    let root = run.dir.path().join("archive");
    let vendor = web_dir().join("node_modules/hls.js/dist");
    let config = run.collector_config(root.to_str().unwrap()).replace(
        "[http]\nlisten = \"\"\n",
        &format!(
            "[http]\nlisten = \"{addr}\"\nweb_vendor_dir = \"{}\"\n[live]\ndetections_topic = \"\"\n\
             [live.fleet]\nurl = \"mqtt://{host}:{port}\"\ntopic_prefix = \"{prefix}\"\n",
            vendor.display()
        ),
    );
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    // The agent reports to the fleet: the page shows its status.
    let mqtt = format!(
        "[mqtt]\nurl = \"mqtt://{host}:{port}\"\nagent_id = \"yard-box\"\n\
         topic_prefix = \"{prefix}\"\ntelemetry_period_s = 1\n"
    );
    let cam = PatternCamera {
        id: YARD,
        width: 320,
        height: 192,
        fps: 15,
        frames: 45,
        paced: true,
    };
    // A paced camera drops a frame when the encoder is late (a busy box);
    // the agent counts what it delivered, and that is what must be archived.
    let first = delivered(
        &run.agent_with(&cam, "", &mqtt)
            .wait_summary(Duration::from_secs(60)),
    );
    std::thread::sleep(Duration::from_secs(4));
    let second = delivered(
        &run.agent_with(&cam, "", &mqtt)
            .wait_summary(Duration::from_secs(60)),
    );
    let total = first + second;
    let indexed = std::time::Instant::now();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (status, body) = http_get_status(
            &addr,
            &format!("/api/archive/{YARD}?from={}&to={}", now - 600, now + 60),
        );
        let frames = serde_json::from_str::<serde_json::Value>(&body).map(|v| {
            v["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["frames"].as_u64().unwrap())
                .sum::<u64>()
        });
        if status == 200 && frames.is_ok_and(|f| f == total) {
            break;
        }
        assert!(
            indexed.elapsed() < Duration::from_secs(60),
            "{total} frames in the index within 60 s; the timeline API said: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let v = drive_mode(
        &format!("http://{addr}/?camera={YARD}&timeline=60"),
        YARD,
        "live-page-timeline.png",
        2,
        "timeline",
    );
    let t = &v["timeline"];
    assert_eq!(t["spans"].as_array().unwrap().len(), 2, "{t}");
    let holes = t["holes"].as_array().unwrap();
    assert_eq!(holes.len(), 1, "{t}");
    let gap_s = (holes[0][1].as_f64().unwrap() - holes[0][0].as_f64().unwrap()) / 1000.0;
    assert!((3.5..15.0).contains(&gap_s), "gap of {gap_s} s: {t}");
    let hole_boxes = t["holeBoxes"].as_array().unwrap();
    assert_eq!(hole_boxes.len(), 1, "{t}");
    assert!(hole_boxes[0]["w"].as_f64().unwrap() >= 4.0, "{t}");
    assert!(t["summary"].as_str().unwrap().contains("1 gaps"), "{t}");
    // Fleet status from the agent's retained MQTT topics: it stopped cleanly.
    let fleet = t["fleet"].as_str().unwrap_or_default();
    assert!(
        fleet.contains("agent yard-box offline (stopped)") && fleet.contains("fps"),
        "{t}"
    );

    // The click played the archive from the first run's start.
    assert_eq!(v["after"]["source"], "archive", "{}", v["after"]);
    assert_played(&v, 2.0, "hls.js");
    assert!(
        v["before"]["frameNumber"].as_u64().unwrap() < 15,
        "{}",
        v["before"]
    );

    // The export link: both runs, one timeline, 6 s.
    let href = t["exportHref"].as_str().unwrap();
    assert!(
        href.contains("/archive/page/yard/export.ts?from="),
        "{href}"
    );
    let file = run.dir.path().join("export.ts");
    let ok = Command::new("curl")
        .args(["-sSf", "--max-time", "30", "-o"])
        .arg(&file)
        .arg(href)
        .status()
        .unwrap();
    assert!(ok.success());
    // Each run's frame numbers, rising within 0..45 (all 45 unless the
    // camera dropped some, as counted above).
    let numbers = frame_numbers(&file, 320, 192);
    let split = numbers
        .windows(2)
        .position(|w| w[1] <= w[0])
        .map_or(numbers.len(), |p| p + 1);
    assert_eq!(
        (split as u64, numbers.len() as u64),
        (first, total),
        "{numbers:?}"
    );
    assert!(
        [&numbers[..split], &numbers[split..]]
            .iter()
            .all(|run| run.windows(2).all(|w| w[0] < w[1]) && run.iter().all(|&n| n < 45)),
        "{numbers:?}"
    );
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let dropped = (90 - total) as f64;
    assert!(
        (duration - 6.0).abs() <= (1.0 + dropped) / 15.0 + 0.01,
        "export lasts {duration} s ({dropped} frames dropped at the camera)"
    );
}
