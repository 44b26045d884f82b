//! `producer`: the agent's Kafka sink alone, on real H.264 frames made by the
//! agent's encoder beforehand (so encoding costs nothing during the runs).
//!
//! * compression: `none`, `lz4`, `snappy`, `zstd` (librdkafka
//!   `compression.type`; gzip is not built in: rdkafka's `libz` feature is off);
//!   bytes the broker stored against payload bytes, producer CPU, and
//!   enqueue -> ack latency;
//! * security: plaintext against SASL_SSL (TLS + SCRAM-SHA-512) on the same
//!   frames: CPU, latency and the time to connect and get the first ack.
//!
//! Each setting runs `reps` times, the settings interleaved within each
//! round so drift on this shared machine hits all alike; the run with the
//! median CPU time is shown. One discarded run first warms up the broker.
//!
//! Frames go at the camera's pace, one camera, as in the agent. CPU is this
//! process's (the sink, librdkafka's threads, the tokio runtime; nothing else
//! runs meanwhile), measured around the paced loop only.

use crate::kafka::Kafka;
use crate::measure::{percentile, process_cpu};
use crate::table::{f, ms, Table};
use anyhow::{bail, Context};
use camfleet_agent::encode::H264Encoder;
use camfleet_agent::sink::kafka::KafkaSink;
use camfleet_agent::sink::FrameSink;
use camfleet_agent::source::y4m::Y4mFile;
use camfleet_agent::source::FrameSource;
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::{AgentKafkaConfig, EncoderConfig};
use camfleet_shared::wire::{Codec, FrameMeta, Rational};
use camfleet_shared::CameraId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Args {
    pub clips: Vec<PathBuf>,
    pub frames: u64,
    pub kbps: u32,
    /// Runs per setting, interleaved; the run with the median CPU is shown.
    pub reps: u32,
}

const CODECS: [&str; 4] = ["none", "lz4", "snappy", "zstd"];

pub(crate) struct Clip {
    name: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) fps: Rational,
    /// (keyframe, Annex-B access unit) per frame.
    pub(crate) frames: Vec<(bool, Vec<u8>)>,
}

impl Clip {
    fn payload_bytes(&self) -> u64 {
        self.frames.iter().map(|(_, p)| p.len() as u64).sum()
    }
}

/// Encodes the first `n` frames of `path` (looped if shorter) with the
/// agent's encoder at `kbps`, IDR every 60 frames (the agent's default).
pub(crate) fn encode_clip(path: &Path, n: u64, kbps: u32) -> anyhow::Result<Clip> {
    let mut src = Y4mFile::open(path, true, false)?;
    let format = src.format();
    // The agent's defaults (IDR every 60) but the bitrate; `..Default` keeps
    // this building as the encoder grows settings.
    let mut enc = H264Encoder::new(
        format,
        &EncoderConfig {
            bitrate_kbps: kbps,
            ..EncoderConfig::default()
        },
    )?;
    debug_assert_eq!(EncoderConfig::default().keyframe_interval_frames, 60);
    let mut frames = Vec::with_capacity(n as usize);
    let mut buf = Vec::new();
    for i in 0..n {
        let frame = src
            .next_frame(std::mem::take(&mut buf))?
            .context("clip ended")?;
        let e = enc.encode(i, &frame.i420)?;
        frames.push((e.keyframe, e.annex_b));
        buf = frame.i420;
    }
    Ok(Clip {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        width: format.width,
        height: format.height,
        fps: format.fps,
        frames,
    })
}

/// The connection a run uses.
#[derive(Clone)]
struct Link {
    name: &'static str,
    /// `[kafka]` keys beyond bootstrap_servers and topic, as JSON.
    security: serde_json::Value,
    bootstrap: String,
}

fn links(kafka: &Kafka) -> anyhow::Result<Vec<Link>> {
    let plain = Link {
        name: "plaintext",
        security: serde_json::json!({}),
        bootstrap: kafka.bootstrap.clone(),
    };
    let var = |k: &str| {
        std::env::var(k).with_context(|| {
            format!("{k} is not set: scripts/services up writes it (the SASL_SSL listener)")
        })
    };
    let secure = Link {
        name: "sasl_ssl (TLS + SCRAM-SHA-512)",
        security: serde_json::json!({
            "security_protocol": "sasl_ssl",
            "tls": { "ca_file": var("KAFKA_CA_FILE")? },
            "sasl": {
                "mechanism": "scram_sha_512",
                "username": var("KAFKA_SCRAM_USER")?,
                "password_file": var("KAFKA_SCRAM_PASSWORD_FILE")?,
            },
        }),
        bootstrap: var("KAFKA_SECURE_BOOTSTRAP")?,
    };
    Ok(vec![plain, secure])
}

struct RunResult {
    cpu: Duration,
    wall: Duration,
    /// enqueue -> ack per frame, µs, sorted.
    latency_us: Vec<u64>,
    /// Sink creation -> first (warm-up) ack.
    connect: Duration,
    broker_bytes: Option<u64>,
}

/// Sends `clip` at its frame rate through the agent's Kafka sink to a fresh
/// topic with `compression` over `link`.
async fn run_one(
    kafka: &Kafka,
    clip: &Clip,
    link: &Link,
    compression: &str,
) -> anyhow::Result<RunResult> {
    let topic = kafka.fresh_topic("producer").await?;
    let mut cfg = serde_json::json!({
        "bootstrap_servers": link.bootstrap,
        "topic": topic,
        "librdkafka_options": { "compression.type": compression },
    });
    for (k, v) in link.security.as_object().expect("an object") {
        cfg[k] = v.clone();
    }
    let cfg: AgentKafkaConfig = serde_json::from_value(cfg)?;
    let camera = CameraId::new("bench/producer")?;
    let meta = |seq: u64, keyframe: bool| FrameMeta {
        camera: camera.clone(),
        seq,
        capture_us: SystemClock.now_us(),
        pts_90k: seq * 90_000 * clip.fps.den as u64 / clip.fps.num as u64,
        keyframe,
        width: clip.width,
        height: clip.height,
        fps: clip.fps,
        codec: Codec::H264,
        epoch: 1,
    };
    // Connected (TLS, SCRAM, producer id, leader) before the clock starts.
    let t = Instant::now();
    let sink = KafkaSink::new(&cfg)?;
    let (key, first) = &clip.frames[0];
    sink.enqueue(&meta(0, *key), first, &[])
        .await?
        .await
        .context("warm-up frame")?;
    let connect = t.elapsed();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let period = Duration::from_secs_f64(clip.fps.den as f64 / clip.fps.num as f64);
    let cpu0 = process_cpu();
    let start = Instant::now();
    for (i, (key, payload)) in clip.frames.iter().enumerate().skip(1) {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let t = Instant::now();
        let ack = sink.enqueue(&meta(i as u64, *key), payload, &[]).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = ack.await.map(|_| t.elapsed().as_micros() as u64);
            let _ = tx.send(r);
        });
    }
    drop(tx);
    let mut latency_us = Vec::new();
    while let Some(r) = rx.recv().await {
        latency_us.push(r?);
    }
    let wall = start.elapsed();
    let cpu = process_cpu() - cpu0;
    drop(sink);
    latency_us.sort_unstable();
    let broker_bytes = broker_log_bytes(kafka, &topic);
    kafka.delete_topic(&topic).await?;
    Ok(RunResult {
        cpu,
        wall,
        latency_us,
        connect,
        broker_bytes,
    })
}

/// Bytes of the topic's partition 0 in the broker's log files (one replica),
/// from the local services' data dir; None when that is not readable.
fn broker_log_bytes(kafka: &Kafka, topic: &str) -> Option<u64> {
    let svc = std::env::var("CAMFLEET_SERVICES_DIR").ok()?;
    let data = Path::new(&svc)
        .join("data")
        .join(format!("kafka-{}n", kafka.nodes));
    for node in std::fs::read_dir(data).ok()?.flatten() {
        let dir = node.path().join(format!("{topic}-0"));
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let bytes = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        return Some(bytes);
    }
    None
}

fn mb(bytes: u64) -> String {
    f(bytes as f64 / 1e6, 2)
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    if args.frames < 2 {
        bail!("--frames must be at least 2");
    }
    let links = links(kafka)?;
    let mut clips = Vec::new();
    for path in &args.clips {
        let (p, n, kbps) = (path.clone(), args.frames, args.kbps);
        clips.push(tokio::task::spawn_blocking(move || encode_clip(&p, n, kbps)).await??);
    }

    // Discarded: the first producer of a process and the broker's first
    // fresh topic of a run are slower than the rest.
    run_one(kafka, &clips[0], &links[0], "none").await?;
    let mut settings = Vec::new();
    for (c, _) in clips.iter().enumerate() {
        for codec in CODECS {
            settings.push((c, 0usize, codec));
        }
        for l in 1..links.len() {
            settings.push((c, l, "none"));
        }
    }
    let mut runs: Vec<Vec<RunResult>> = settings.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.reps.max(1) {
        for (i, (c, l, codec)) in settings.iter().enumerate() {
            runs[i].push(run_one(kafka, &clips[*c], &links[*l], codec).await?);
        }
    }
    let median = |i: usize| -> &RunResult {
        let mut v: Vec<&RunResult> = runs[i].iter().collect();
        v.sort_by_key(|r| r.cpu);
        v[v.len() / 2]
    };
    let find = |c: usize, l: usize, codec: &str| {
        settings
            .iter()
            .position(|s| *s == (c, l, codec))
            .expect("a measured setting")
    };

    let mut comp = Table::new(
        format!(
            "producer compression: the agent's Kafka sink, {} real H.264 frames per clip (agent's encoder, {} kbit/s, IDR every 60), paced at the clip's rate, plaintext, loopback broker, median of {} runs",
            args.frames, args.kbps, args.reps.max(1)
        ),
        &[
            "clip",
            "compression",
            "payload MB",
            "broker MB",
            "broker / none",
            "CPU s",
            "CPU ms per MB",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
        ],
    );
    for (c, clip) in clips.iter().enumerate() {
        let none_bytes = median(find(c, 0, "none")).broker_bytes;
        for codec in CODECS {
            let r = median(find(c, 0, codec));
            let payload = clip.payload_bytes();
            comp.row(vec![
                clip.name.clone(),
                codec.into(),
                mb(payload),
                r.broker_bytes.map_or("?".into(), mb),
                match (r.broker_bytes, none_bytes) {
                    (Some(b), Some(n)) if n > 0 => {
                        format!("{}%", f(b as f64 / n as f64 * 100.0, 1))
                    }
                    _ => "?".into(),
                },
                f(r.cpu.as_secs_f64(), 3),
                f(r.cpu.as_secs_f64() * 1e3 / (payload as f64 / 1e6), 1),
                ms(percentile(&r.latency_us, 0.5)),
                ms(percentile(&r.latency_us, 0.99)),
                ms(*r.latency_us.last().unwrap_or(&0)),
            ]);
        }
    }
    comp.note("broker MB: the partition's .log files on the broker (one replica), record and batch overhead included; topic compression.type is the default \"producer\", so the broker stores what the producer sent");
    comp.note("CPU: this process (sink + librdkafka threads + runtime) during the paced loop; frames were encoded beforehand");
    comp.emit(results)?;

    let mut sec = Table::new(
        format!(
            "producer security: plaintext vs SASL_SSL (TLS + SCRAM-SHA-512), same frames, compression none, {} frames per clip, median of {} runs",
            args.frames,
            args.reps.max(1)
        ),
        &[
            "clip",
            "link",
            "connect + first ack ms",
            "CPU s",
            "CPU ms per MB",
            "% of a core",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
        ],
    );
    for (c, clip) in clips.iter().enumerate() {
        for (l, link) in links.iter().enumerate() {
            let r = median(find(c, l, "none"));
            sec.row(vec![
                clip.name.clone(),
                link.name.into(),
                f(r.connect.as_secs_f64() * 1e3, 1),
                f(r.cpu.as_secs_f64(), 3),
                f(
                    r.cpu.as_secs_f64() * 1e3 / (clip.payload_bytes() as f64 / 1e6),
                    1,
                ),
                f(r.cpu.as_secs_f64() / r.wall.as_secs_f64() * 100.0, 2),
                ms(percentile(&r.latency_us, 0.5)),
                ms(percentile(&r.latency_us, 0.99)),
                ms(*r.latency_us.last().unwrap_or(&0)),
            ]);
        }
    }
    sec.note("connect + first ack: sink creation to the first frame's acknowledgement (TCP, TLS handshake, SCRAM exchange, producer id, metadata)");
    sec.emit(results)
}
