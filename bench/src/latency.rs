//! `latency`: the real agent binary at 720p30 (test pattern, paced like a
//! camera) to a fresh topic on the loopback broker.
//!
//! * capture -> Kafka ack: the agent's own numbers (its exit summary);
//! * capture -> consumer receipt: a consumer in this process, set up as the
//!   collector's, timestamps each frame against its `cf.capture_us` header;
//! * cost: the agent's CPU time (wait4) and peak RSS, against the encoder
//!   alone and the test pattern alone on the same frames at the same pace,
//!   measured here afterwards, so the difference is what the agent adds.

use crate::agent::{self, AgentSpec};
use crate::kafka::{FrameConsumer, Kafka};
use crate::measure::{percentile, thread_cpu};
use crate::table::{f, ms, Table};
use camfleet_agent::encode::H264Encoder;
use camfleet_agent::source::test_pattern::TestPattern;
use camfleet_agent::source::FrameSource;
use camfleet_shared::config::EncoderConfig;
use camfleet_shared::wire::Rational;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Args {
    pub seconds: u64,
    pub agent: PathBuf,
    pub work: PathBuf,
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const KBPS: u32 = 2000;

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let frames = args.seconds * FPS as u64;
    let topic = kafka.fresh_topic("latency").await?;
    let consumer = FrameConsumer::start(kafka, &topic).await?;
    let run = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            agent::run(
                &args.agent,
                &args.work,
                &kafka,
                &AgentSpec {
                    name: "latency",
                    topic: &topic,
                    source: agent::test_pattern_source(WIDTH, HEIGHT, FPS),
                    bitrate_kbps: KBPS,
                    frames,
                    cameras: 1,
                },
            )
        })
        .await??
    };
    let acked = run.u64("frames_acked")?;
    let received = consumer.finish(acked, Duration::from_secs(10)).await?;
    kafka.delete_topic(&topic).await?;

    let encoded = run.u64("frames_encoded")?;
    let captured = run.u64("frames_captured")?;
    let (render_cpu, encode_cpu) =
        tokio::task::spawn_blocking(move || reference(captured, encoded)).await??;

    let mut receipt: Vec<u64> = received
        .iter()
        .map(|r| r.recv_us.saturating_sub(r.capture_us))
        .collect();
    receipt.sort_unstable();
    let encode_mean_us = run.u64("encode_ms_total")? as f64 * 1000.0 / encoded.max(1) as f64;
    let target_us = encode_mean_us + 3000.0;
    let ack_p99 = run.u64("ack_latency_us_p99")?;

    let mut lat = Table::new(
        format!(
            "latency: {WIDTH}x{HEIGHT} test pattern at {FPS} fps, {} Mbit/s, {} s, loopback Kafka (acks=all)",
            KBPS / 1000,
            args.seconds
        ),
        &["path", "frames", "p50 ms", "p99 ms", "max ms"],
    );
    lat.row(vec![
        "capture -> Kafka ack (agent's stats)".into(),
        acked.to_string(),
        ms(run.u64("ack_latency_us_p50")?),
        ms(ack_p99),
        ms(run.u64("ack_latency_us_max")?),
    ]);
    if !receipt.is_empty() {
        lat.row(vec![
            "capture -> consumer receipt (collector-style consumer)".into(),
            receipt.len().to_string(),
            ms(percentile(&receipt, 0.5)),
            ms(percentile(&receipt, 0.99)),
            ms(*receipt.last().expect("not empty")),
        ]);
    }
    lat.row(vec![
        "encode, mean per frame (agent's stats, wall)".into(),
        encoded.to_string(),
        f(encode_mean_us / 1000.0, 1),
        "".into(),
        "".into(),
    ]);
    lat.note(format!(
        "target: capture -> ack p99 <= encode mean + 3 ms = {} ms; measured p99 {} ms ({})",
        f(target_us / 1000.0, 1),
        ms(ack_p99),
        if ack_p99 as f64 <= target_us {
            "within"
        } else {
            "over"
        }
    ));
    lat.note(format!(
        "frames: {captured} captured, {} dropped while the encoder was busy, {encoded} encoded, {acked} acked, {} failed",
        run.u64("frames_dropped_busy")?,
        run.u64("frames_failed")?
    ));
    lat.emit(results)?;

    let wall = run.wall.as_secs_f64();
    let pct = |cpu: Duration| format!("{}% of a core", f(cpu.as_secs_f64() / wall * 100.0, 1));
    let overhead = run.cpu.as_secs_f64() - encode_cpu.as_secs_f64() - render_cpu.as_secs_f64();
    let mut cost = Table::new(
        "agent process cost, same run",
        &["measure", "value", "CPU s", "share"],
    );
    cost.row(vec![
        "peak RSS (VmHWM)".into(),
        format!("{} MB", f(run.vm_hwm_kb as f64 / 1024.0, 1)),
        "".into(),
        "target <= 30 MB".into(),
    ]);
    cost.row(vec![
        "agent process, user+sys".into(),
        format!("{} s wall", f(wall, 1)),
        f(run.cpu.as_secs_f64(), 2),
        pct(run.cpu),
    ]);
    cost.row(vec![
        "encoder alone, same frames and pace".into(),
        format!("{encoded} frames"),
        f(encode_cpu.as_secs_f64(), 2),
        pct(encode_cpu),
    ]);
    cost.row(vec![
        "test pattern rendering alone (the fake camera)".into(),
        format!("{captured} frames"),
        f(render_cpu.as_secs_f64(), 2),
        pct(render_cpu),
    ]);
    cost.row(vec![
        "agent beyond encoder + camera".into(),
        "".into(),
        f(overhead, 2),
        format!(
            "{}% of encoder CPU",
            f(overhead / encode_cpu.as_secs_f64() * 100.0, 1)
        ),
    ]);
    cost.note("target: agent overhead beyond the encoder <= 3% CPU");
    cost.note("reference runs use this process's thread CPU clock around each render/encode call, paced at the same frame rate as the agent");
    cost.emit(results)?;

    let mut threads = Table::new(
        "agent CPU by thread, same run (from /proc/<pid>/task, 10 ms ticks)",
        &["thread", "CPU s", "share of agent CPU"],
    );
    for (name, cpu) in &run.threads {
        threads.row(vec![
            name.clone(),
            f(cpu.as_secs_f64(), 2),
            format!(
                "{}%",
                f(cpu.as_secs_f64() / run.cpu.as_secs_f64() * 100.0, 1)
            ),
        ]);
    }
    threads.note("names are cut to 15 characters by the kernel; threads of one name are summed");
    threads.emit(results)
}

/// CPU time of rendering `captured` test-pattern frames and encoding the
/// first `encoded` of them with the agent's encoder, paced at the camera's
/// rate as in the agent (an unpaced loop keeps caches warm and costs less).
fn reference(captured: u64, encoded: u64) -> anyhow::Result<(Duration, Duration)> {
    let fps = Rational::new(FPS, 1).expect("fps > 0");
    let mut camera = TestPattern::new(WIDTH, HEIGHT, fps, true);
    let mut encoder = H264Encoder::new(
        camera.format(),
        &EncoderConfig {
            bitrate_kbps: KBPS,
            keyframe_interval_frames: 60,
            ..EncoderConfig::default()
        },
    )?;
    let (mut render, mut encode) = (Duration::ZERO, Duration::ZERO);
    let mut buf = Vec::new();
    for i in 0..captured {
        // The pattern paces itself (sleeping costs no CPU).
        let t = thread_cpu();
        let frame = camera
            .next_frame(std::mem::take(&mut buf))?
            .expect("a test pattern never ends");
        let t1 = thread_cpu();
        render += t1 - t;
        if i < encoded {
            std::hint::black_box(encoder.encode(frame.index, &frame.i420)?);
            encode += thread_cpu() - t1;
        }
        buf = frame.i420;
    }
    Ok((render, encode))
}
