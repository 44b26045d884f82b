//! Bad input gets a clear error and changes nothing else; SIGTERM drains.

use camfleet_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_misspelt_config_key_is_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        r#"data_dir = "/tmp/x"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[camera]]
id = "s/c"
source = { kind = "test_pattern", width = 320, height = 240 }
encoder = { bitrate_kpbs = 500 }
"#,
    )
    .unwrap();
    let out = Command::new(binary("camfleet-agent"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bitrate_kpbs") && err.contains("agent.toml"),
        "{err}"
    );
    assert_eq!(err.matches("unknown field").count(), 1, "said once: {err}");

    let out = Command::new(binary("camfleet-collector"))
        .args(["validate", "--config", "/nonexistent/collector.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/collector.toml"), "{err}");
}

#[test]
fn a_spill_dir_that_cannot_take_files_stops_the_collector_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the spill directory should be.
    let spill = dir.path().join("spill-is-a-file");
    std::fs::write(&spill, b"x").unwrap();
    let archive = dir.path().join("archive");
    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[kafka]
bootstrap_servers = "127.0.0.1:1"
topic = "camfleet.video.v1"
group_id = "spill-check"
[archive]
root = "{}"
spill_dir = "{}"
[http]
listen = ""
"#,
            archive.display(),
            spill.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary("camfleet-collector"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the collector kept running with an unusable spill_dir");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        err.contains("spill directory") && err.contains("spill-is-a-file"),
        "{err}"
    );
    // Nothing else changed: the spill path is still the file it was.
    assert_eq!(std::fs::read(&spill).unwrap(), b"x");
}

#[test]
fn sigterm_drains_every_encoded_frame_to_kafka_within_10_s() {
    let run = Scenario::new("drain", 1);
    let cam = PatternCamera {
        id: "lab/drain",
        width: 640,
        height: 360,
        fps: 30,
        frames: 100_000,
        paced: true,
    };
    let agent = run.agent(&cam, "");
    std::thread::sleep(Duration::from_secs(3));
    agent.signal("TERM");
    let t = Instant::now();
    let summary = agent.wait_summary(Duration::from_secs(10));
    eprintln!("agent stopped {:?} after SIGTERM", t.elapsed());
    let encoded = summary["frames_encoded"].as_u64().unwrap();
    assert!(encoded >= 60, "{summary}");
    assert_eq!(delivered(&summary), encoded, "{summary}");
    assert_eq!(summary["frames_failed"], 0, "{summary}");
    // And the next run continues the sequence where this one stopped.
    let next = PatternCamera {
        frames: 5,
        paced: false,
        ..cam
    };
    let second = run.agent(&next, "").wait_summary(Duration::from_secs(30));
    assert_eq!(second["seq_first"].as_u64().unwrap(), encoded, "{second}");
    assert_eq!(
        second["epoch"].as_u64().unwrap(),
        summary["epoch"].as_u64().unwrap() + 1
    );
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_and_video_still_flows() {
    let run = Scenario::new("dlq", 1);
    let (s, topic) = (&run.services, &run.topic);
    // A foreign record (no camfleet headers) and one with a bad header, written by kcat.
    for (key, headers) in [
        ("some/thing", Vec::<&str>::new()),
        (
            "lab/bad",
            // Every header right except the sequence number.
            [
                "cf.v=1",
                "cf.camera=lab/bad",
                "cf.seq=oops",
                "cf.capture_us=1",
                "cf.pts_90k=0",
                "cf.key=1",
                "cf.width=320",
                "cf.height=240",
                "cf.fps=30/1",
                "cf.codec=h264",
                "cf.epoch=1",
            ]
            .iter()
            .flat_map(|h| ["-H", *h])
            .collect(),
        ),
    ] {
        let mut cmd = Command::new("kcat");
        cmd.args(["-b", &s.kafka, "-P", "-t", topic, "-k", key])
            .args(&headers);
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("kcat");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"not video\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    let cam = PatternCamera {
        id: "lab/good",
        width: 320,
        height: 240,
        fps: 30,
        frames: 30,
        paced: false,
    };
    run.agent(&cam, "").wait_success(Duration::from_secs(60));
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    wait_until(Duration::from_secs(60), "the good camera archived", || {
        segments_under(&root)
            .iter()
            .map(|p| ffprobe_frames(p).3)
            .sum::<u64>()
            == 30
    });
    collector.signal("TERM");
    let summary = collector.wait_summary(Duration::from_secs(15));
    assert_eq!(summary["dead_letter_records"], 2, "{summary}");
    assert_eq!(summary["frames_archived"], 30, "{summary}");

    let out = Command::new("kcat")
        .args([
            "-b",
            &s.kafka,
            "-C",
            "-t",
            &format!("{topic}.dlq"),
            "-o",
            "beginning",
            "-c",
            "2",
            "-e",
            "-q",
        ])
        .args(["-f", "%k|%h|%s\n"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The dead-letter topic may have several partitions: order by key.
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.starts_with("some/thing")));
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("some/thing|")
            && lines[0].contains("cf.dlq.error=header cf.v is missing"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("cf.seq")
            && lines[1].contains("oops")
            && lines[1].ends_with("|not video"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(&format!("cf.dlq.source={topic}/0/1")),
        "{}",
        lines[1]
    );
}
