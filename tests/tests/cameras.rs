//! Several cameras in one agent against the real broker: one camera failing
//! (file missing, then malformed mid-stream) is retried with backoff while
//! the other streams on without a gap; `/metrics` shows both.

use camfleet_agent::source::test_pattern::render;
use camfleet_tests::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const W: u32 = 160;
const H: u32 = 96;

/// A Y4M of `frames` test-pattern pictures followed by `trailer` bytes,
/// written whole at once (tmp + rename), as a camera appearing would.
fn write_y4m(path: &Path, frames: u64, trailer: &[u8]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    writeln!(f, "YUV4MPEG2 W{W} H{H} F30:1 Ip C420jpeg").unwrap();
    for i in 0..frames {
        f.write_all(b"FRAME\n").unwrap();
        f.write_all(&render(W, H, i)).unwrap();
    }
    f.write_all(trailer).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn cameras_one_failing_is_retried_while_the_other_streams_on() {
    let run = Scenario::new("cameras-retry", 1);
    let data = run.dir.path().join("agent-data");
    let clip = run.dir.path().join("flaky.y4m");
    let http = free_local_addr();
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = "{http}"
[[camera]]
id = "t/steady"
max_frames = 240
source = {{ kind = "test_pattern", width = {W}, height = {H}, fps = 30 }}
encoder = {{ bitrate_kbps = 300, keyframe_interval_frames = 15 }}
[[camera]]
id = "t/flaky"
max_frames = 60
source = {{ kind = "y4m", path = "{clip}" }}
encoder = {{ bitrate_kbps = 300, keyframe_interval_frames = 15 }}
"#,
        data = data.display(),
        kafka = run.services.kafka,
        topic = run.topic,
        clip = clip.display(),
    );
    let agent = run.spawn("agent", "camfleet-agent", &config);

    // The flaky camera's file is missing: the agent runs, says so, retries.
    let mut scrape = String::new();
    wait_until(
        Duration::from_secs(20),
        "a restart and acks on /metrics",
        || {
            scrape = std::net::TcpStream::connect(&http)
                .map(|_| http_get(&http, "/metrics"))
                .unwrap_or_default();
            metric(
                &scrape,
                r#"camfleet_agent_camera_restarts_total{camera="t/flaky"}"#,
            )
            .is_some_and(|n| n >= 1.0)
                && metric(
                    &scrape,
                    r#"camfleet_agent_frames_acked_total{camera="t/steady"}"#,
                )
                .is_some_and(|n| n >= 10.0)
        },
    );
    assert_eq!(
        metric(&scrape, r#"camfleet_agent_camera_up{camera="t/flaky"}"#),
        Some(0.0),
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, r#"camfleet_agent_camera_up{camera="t/steady"}"#),
        Some(1.0),
        "{scrape}"
    );
    for name in [
        r#"camfleet_agent_frames_captured_total{camera="t/steady"}"#,
        r#"camfleet_agent_frames_encoded_total{camera="t/steady"}"#,
        r#"camfleet_agent_frames_acked_total{camera="t/steady"}"#,
        r#"camfleet_agent_encode_seconds_count{camera="t/steady"}"#,
        r#"camfleet_agent_capture_to_ack_seconds_count{camera="t/steady"}"#,
    ] {
        assert!(
            metric(&scrape, name).is_some_and(|v| v > 0.0),
            "{name} missing or 0 in:\n{scrape}"
        );
    }
    assert!(
        scrape.contains(r#"camfleet_agent_encode_seconds_bucket{camera="t/steady",le="0.008"}"#),
        "{scrape}"
    );
    assert!(
        scrape.contains(r#"camfleet_agent_build_info{version=""#),
        "{scrape}"
    );

    // The camera appears: 30 good frames, then garbage where frame 30's
    // header should be. It streams, fails naming the byte, and streams again.
    write_y4m(&clip, 30, b"NOT A FRAME LINE\n");
    let log_path = agent.log.clone();
    let out = agent.wait_success(Duration::from_secs(90));
    let log = std::fs::read_to_string(log_path).unwrap();
    let summaries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |cam: &str| {
        summaries
            .iter()
            .find(|s| s["camera"] == cam)
            .unwrap_or_else(|| panic!("{cam} in {out}"))
            .clone()
    };
    let (steady, flaky) = (of("t/steady"), of("t/flaky"));
    assert_eq!(steady["restarts"], 0, "{steady}");
    assert_eq!(steady["frames_encoded"], 240, "{steady}");
    assert!(flaky["restarts"].as_u64().unwrap() >= 2, "{flaky}");
    assert_eq!(flaky["frames_encoded"], 60, "{flaky}");

    let frames = read_topic(&run.services, &run.topic);
    let s = check_stream(&frames, "t/steady");
    assert_eq!((s.distinct, s.duplicates, s.missing.len()), (240, 0, 0));
    let steady_frames: Vec<_> = frames
        .iter()
        .filter(|f| f.meta.camera.as_str() == "t/steady")
        .collect();
    assert!(steady_frames
        .iter()
        .all(|f| f.meta.epoch == steady_frames[0].meta.epoch));
    let pause = steady_frames
        .windows(2)
        .map(|w| w[1].meta.capture_us - w[0].meta.capture_us)
        .max()
        .unwrap();
    assert!(pause < 500_000, "the steady camera paused {pause} µs");

    // The flaky one: two runs of 30, each its own epoch starting with an
    // IDR, sequence numbers contiguous across the restart.
    let f = check_stream(&frames, "t/flaky");
    assert_eq!((f.distinct, f.duplicates, f.missing.len()), (60, 0, 0));
    let flaky_frames: Vec<_> = frames
        .iter()
        .filter(|f| f.meta.camera.as_str() == "t/flaky")
        .collect();
    assert_eq!(flaky_frames[30].meta.epoch, flaky_frames[0].meta.epoch + 1);
    assert!(flaky_frames[0].meta.keyframe && flaky_frames[30].meta.keyframe);

    // Each failure was logged naming the camera and the cause.
    assert!(
        log.contains("t/flaky") && log.contains("No such file"),
        "no missing-file error in:\n{log}"
    );
    let offset = 37 + 30 * (6 + (W * H * 3 / 2) as usize);
    assert!(
        log.contains(&format!("at byte {offset}: expected a FRAME line")),
        "no malformed-Y4M error with the byte offset in:\n{log}"
    );
}

/// `[camera.encoder]` width/height and max_fps: a 320x180@30 pattern is sent
/// as 160x90@10; the H.264 itself (decoded here) has the new size.
#[test]
fn cameras_scaled_and_thinned_as_configured() {
    use openh264::decoder::Decoder;
    use openh264::formats::YUVSource;
    let run = Scenario::new("cameras-scaled", 1);
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[[camera]]
id = "t/scaled"
max_frames = 90
source = {{ kind = "test_pattern", width = 320, height = 180, fps = 30, unpaced = true }}
encoder = {{ bitrate_kbps = 200, keyframe_interval_frames = 10, width = 160, height = 90, max_fps = 10 }}
"#,
        data = run.dir.path().join("data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
    );
    let summary = run
        .spawn("agent", "camfleet-agent", &config)
        .wait_summary(Duration::from_secs(60));
    assert_eq!(summary["frames_captured"], 90, "{summary}");
    assert_eq!(summary["frames_thinned"], 60, "{summary}");
    assert_eq!(summary["frames_encoded"], 30, "{summary}");

    let frames = read_topic(&run.services, &run.topic);
    assert_eq!(frames.len(), 30);
    let pts: Vec<u64> = frames.iter().map(|f| f.meta.pts_90k).collect();
    assert!(pts.windows(2).all(|w| w[1] - w[0] == 9000), "{pts:?}");
    let m = &frames[0].meta;
    assert_eq!((m.width, m.height, m.fps.num, m.fps.den), (160, 90, 10, 1));
    let mut decoder = Decoder::new().unwrap();
    let mut decoded = 0;
    for f in &frames {
        if let Some(pic) = decoder.decode(&f.payload).unwrap() {
            assert_eq!(pic.dimensions(), (160, 90));
            decoded += 1;
        }
    }
    assert!(decoded >= 29, "decoded {decoded} of 30");
}
