//! Agent -> real Kafka -> an independent consumer in the test: frame numbers
//! in order, metadata in headers, PSNR-Y against the source above 35 dB; and
//! kcat (a peer) lists the records with their headers.

use camfleet_agent::source::test_pattern::{read_frame_number, render};
use camfleet_shared::wire::{self, Reassembler};
use camfleet_tests::*;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const W: u32 = 640;
const H: u32 = 360;

/// Reads `n` whole frames (reassembling chunks) from partition 0 of `topic`.
fn consume_frames(s: &Services, topic: &str, n: usize) -> Vec<(wire::FrameMeta, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", format!("{topic}.reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut frames = Vec::new();
    let mut reassembler = Reassembler::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while frames.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} frames arrived",
            frames.len()
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        let headers: Vec<(&str, Option<&[u8]>)> = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let (meta, chunk) = wire::parse(msg.key(), headers).expect("agent records parse");
        if let Some(whole) = reassembler
            .push(meta, chunk, msg.payload().unwrap())
            .expect("chunks in order")
        {
            frames.push(whole);
        }
    }
    frames
}

/// Runs the agent for `frames` frames of the 640x360 pattern; its summary.
fn run_agent(run: &Scenario, frames: u64, extra_kafka: &str) -> serde_json::Value {
    let camera = PatternCamera {
        id: "lab/pattern",
        width: W,
        height: H,
        fps: 30,
        frames,
        paced: false,
    };
    run.agent(&camera, extra_kafka)
        .wait_summary(Duration::from_secs(120))
}

#[test]
fn frames_survive_the_real_broker_in_order_and_at_quality() {
    let run = Scenario::new("roundtrip", 3);
    let (s, topic) = (&run.services, &run.topic);
    let n = 90;
    let summary = run_agent(&run, n, "");
    assert_eq!(delivered(&summary), n, "{summary}");
    assert_eq!(summary["frames_failed"], 0, "{summary}");

    let frames = consume_frames(s, topic, n as usize);
    let mut decoder = Decoder::new().unwrap();
    let mut worst = f64::MAX;
    for (i, (meta, annex_b)) in frames.iter().enumerate() {
        assert_eq!(meta.seq, i as u64, "sequence order");
        assert_eq!(meta.camera.as_str(), "lab/pattern");
        assert_eq!((meta.width, meta.height, meta.fps.num), (W, H, 30));
        assert_eq!(meta.keyframe, i % 15 == 0, "keyframe flag of frame {i}");
        assert_eq!(meta.pts_90k, i as u64 * 3000);
        let yuv = decoder
            .decode(annex_b)
            .expect("decodes")
            .expect("one picture per access unit");
        let (yw, yh) = yuv.dimensions();
        assert_eq!((yw as u32, yh as u32), (W, H));
        let stride = yuv.strides().0;
        let y: Vec<u8> = (0..H as usize)
            .flat_map(|r| yuv.y()[r * stride..r * stride + W as usize].to_vec())
            .collect();
        let number = read_frame_number(&y, W, W as usize).expect("frame number readable");
        assert_eq!(number, i as u64, "decoded picture {i} shows frame {number}");
        let source = render(W, H, number);
        let p = psnr(&y, &source[..(W * H) as usize]);
        worst = worst.min(p);
    }
    eprintln!("worst PSNR-Y over {n} frames: {worst:.2} dB");
    assert!(worst > 35.0, "PSNR-Y {worst:.2} dB <= 35");
}

#[test]
fn frames_larger_than_a_record_are_split_and_rejoined() {
    let run = Scenario::new("chunks", 1);
    let (s, topic) = (&run.services, &run.topic);
    let n = 20;
    // 4 KiB records: every keyframe and most P frames at 640x360 are split.
    let summary = run_agent(&run, n, "max_record_bytes = 4096");
    assert_eq!(delivered(&summary), n, "{summary}");
    let frames = consume_frames(s, topic, n as usize);
    let mut decoder = Decoder::new().unwrap();
    for (i, (meta, annex_b)) in frames.iter().enumerate() {
        assert_eq!(meta.seq, i as u64);
        let yuv = decoder.decode(annex_b).unwrap().unwrap();
        let stride = yuv.strides().0;
        assert_eq!(read_frame_number(yuv.y(), W, stride), Some(i as u64));
    }
}

#[test]
fn kcat_lists_the_records_with_their_headers() {
    let run = Scenario::new("kcat", 1);
    let (s, topic) = (&run.services, &run.topic);
    run_agent(&run, 16, "");
    let out = std::process::Command::new("kcat")
        .args([
            "-b",
            &s.kafka,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-c",
            "16",
            "-e",
            "-q",
        ])
        .args(["-f", "%k|%S|%h\n"])
        .output()
        .expect("kcat is installed by scripts/setup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 16, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.splitn(3, '|').collect();
        assert_eq!(f[0], "lab/pattern");
        assert!(f[1].parse::<usize>().unwrap() > 0, "empty value");
        let h = f[2];
        for want in [
            "cf.v=1".to_string(),
            "cf.camera=lab/pattern".into(),
            format!("cf.seq={i}"),
            format!("cf.key={}", if i % 15 == 0 { 1 } else { 0 }),
            "cf.width=640".into(),
            "cf.height=360".into(),
            "cf.fps=30/1".into(),
            "cf.codec=h264".into(),
        ] {
            assert!(
                h.split(',').any(|kv| kv == want),
                "record {i} lacks {want}: {h}"
            );
        }
    }
}

#[test]
fn a_y4m_clip_arrives_frame_for_frame_at_quality() {
    let run = Scenario::new("y4m", 1);
    let (s, topic, dir) = (&run.services, &run.topic, &run.dir);
    // ffmpeg (a peer) writes the clip; testsrc2 has detail and motion.
    let clip = dir.path().join("clip.y4m");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
        ])
        .args(["-frames:v", "40", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .expect("ffmpeg is installed by scripts/setup")
        .success();
    assert!(ok, "ffmpeg could not write the clip");
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[[camera]]
id = "lab/clip"
source = {{ kind = "y4m", path = "{clip}", unpaced = true }}
encoder = {{ bitrate_kbps = 1500, keyframe_interval_frames = 25 }}
"#,
        data = dir.path().join("data").display(),
        kafka = s.kafka,
        clip = clip.display(),
    );
    let summary = run
        .spawn("agent", "camfleet-agent", &config)
        .wait_summary(Duration::from_secs(60));
    assert_eq!(delivered(&summary), 40, "the file ends the run: {summary}");

    let source = std::fs::read(&clip).unwrap();
    let frames = consume_frames(s, topic, 40);
    let mut decoder = Decoder::new().unwrap();
    let (w, h) = (320usize, 240usize);
    let header_end = source.iter().position(|&b| b == b'\n').unwrap() + 1;
    let frame_len = 6 + w * h * 3 / 2; // "FRAME\n" + I420
    for (i, (meta, annex_b)) in frames.iter().enumerate() {
        assert_eq!((meta.fps.num, meta.fps.den), (25, 1));
        assert_eq!(meta.pts_90k, i as u64 * 3600);
        let yuv = decoder.decode(annex_b).unwrap().unwrap();
        let stride = yuv.strides().0;
        let y: Vec<u8> = (0..h)
            .flat_map(|r| yuv.y()[r * stride..r * stride + w].to_vec())
            .collect();
        let start = header_end + i * frame_len + 6;
        let p = psnr(&y, &source[start..start + w * h]);
        assert!(p > 35.0, "frame {i}: PSNR-Y {p:.2} dB");
    }
}
