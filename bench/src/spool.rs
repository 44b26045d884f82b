//! `spool`: the agent's disk spool (agent/src/spool), four measurements.
//!
//! 1. Drain: the agent binary fills a spool offline (dead bootstrap, unpaced
//!    720p test pattern at 2 Mbit/s, N s of video), then starts again paced
//!    against the loopback broker; the time from its "spool opened" to its
//!    "spool drained" log line is the drain. Peer: one rdkafka producer with
//!    the agent's producer settings sending the same records' bytes, as fast
//!    as it can, in this process.
//! 2. Write cost: the same real encoded frames written through `SledStore`
//!    (the `SpoolStore` trait), bare sled with the store's sled settings, and
//!    a plain file with `fdatasync`, each flushed per frame (`always` mode)
//!    and every 6 frames (200 ms at 30 fps, the `outage` default).
//! 3. Disk writes, CPU and RSS of the agent binary per spool mode, from
//!    `/proc/<pid>/{io,stat,status}` over a steady-state window.
//! 4. Recovery: `SledStore::open` in this process on spools left by SIGKILL
//!    (the agent's dead-broker run of 3, and spools filled to a size by a
//!    `spool-fill` child of this binary), against reading the same files.

use crate::kafka::Kafka;
use crate::measure::{process_cpu, wait_with_cpu};
use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_agent::encode::H264Encoder;
use camfleet_agent::source::test_pattern::TestPattern;
use camfleet_agent::source::FrameSource;
use camfleet_agent::spool::control;
use camfleet_agent::spool::store::{du, SledStore, SpoolStore};
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::{AgentKafkaConfig, EncoderConfig};
use camfleet_shared::wire::{Codec, FrameMeta, Rational};
use camfleet_shared::CameraId;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Args {
    /// Seconds of video in the backlog of the drain test.
    pub backlog_s: u64,
    /// Frames written per writer in the write-cost test.
    pub store_frames: u64,
    /// Seconds each agent runs in the per-mode test.
    pub mode_s: u64,
    /// Spool sizes filled for the recovery test, MB.
    pub recovery_mb: Vec<u64>,
    pub agent: PathBuf,
    pub work: PathBuf,
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const KBPS: u32 = 2000;
const GOP: u32 = 60;
const CAMERA: &str = "bench/spool";
/// Nothing listens there: the broker is "down".
const DEAD_BROKER: &str = "127.0.0.1:9";
const MB: f64 = 1e6;

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let dir = args.work.join("spool");
    fresh_dir(&dir)?;
    let frames = tokio::task::spawn_blocking(real_frames).await??;
    save_frames(&dir.join("frames.bin"), &frames)?;

    drain(kafka, &args, &dir, results).await?;

    let (n, frames2, dir2) = (args.store_frames, frames.clone(), dir.clone());
    let rows = tokio::task::spawn_blocking(move || write_cost(&dir2, &frames2, n)).await??;
    write_cost_table(&rows, n, &frames, results)?;

    let killed = modes(kafka, &args, &dir, results).await?;

    let (args2, dir2) = ((args.recovery_mb.clone(), args.agent.clone()), dir.clone());
    let rows = tokio::task::spawn_blocking(move || recovery(&dir2, killed, &args2.0)).await??;
    recovery_table(&rows, results)?;
    std::fs::remove_dir_all(dir.join("recovery")).ok();
    Ok(())
}

// ---------------------------------------------------------------- frames

/// One encoded frame: Annex-B bytes and whether it is an IDR.
type Frame = (Vec<u8>, bool);

/// Two GOPs of the agent's encoder on its test pattern at 720p 2 Mbit/s,
/// after one GOP of rate-control warm-up: the sizes the spool really sees.
fn real_frames() -> anyhow::Result<Vec<Frame>> {
    let fps = Rational::new(FPS, 1).expect("fps > 0");
    let mut camera = TestPattern::new(WIDTH, HEIGHT, fps, false);
    let mut encoder = H264Encoder::new(
        camera.format(),
        &EncoderConfig {
            bitrate_kbps: KBPS,
            keyframe_interval_frames: GOP,
        },
    )?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for i in 0..3 * GOP as u64 {
        let frame = camera
            .next_frame(std::mem::take(&mut buf))?
            .expect("a test pattern never ends");
        let e = encoder.encode(frame.index, &frame.i420)?;
        if i >= GOP as u64 {
            out.push((e.annex_b, e.keyframe));
        }
        buf = frame.i420;
    }
    Ok(out)
}

/// Frames for the `spool-fill` child: per frame, u32 LE length, u8 keyframe, bytes.
fn save_frames(path: &Path, frames: &[Frame]) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for (p, k) in frames {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.push(*k as u8);
        out.extend_from_slice(p);
    }
    Ok(std::fs::write(path, out)?)
}

fn load_frames(path: &Path) -> anyhow::Result<Vec<Frame>> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut frames = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 5 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let key = rest[4] != 0;
        let body = rest.get(5..5 + len).context("truncated frames file")?;
        frames.push((body.to_vec(), key));
        rest = &rest[5 + len..];
    }
    if frames.is_empty() {
        bail!("{}: no frames", path.display());
    }
    Ok(frames)
}

fn meta(camera: &CameraId, seq: u64, keyframe: bool) -> FrameMeta {
    FrameMeta {
        camera: camera.clone(),
        seq,
        capture_us: SystemClock.now_us(),
        pts_90k: seq * 3000,
        keyframe,
        width: WIDTH,
        height: HEIGHT,
        fps: Rational::new(FPS, 1).expect("fps > 0"),
        codec: Codec::H264,
        epoch: 1,
    }
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(())
}

// ---------------------------------------------------------------- the agent binary

struct AgentConf<'a> {
    data: &'a Path,
    bootstrap: &'a str,
    topic: &'a str,
    max_frames: Option<u64>,
    unpaced: bool,
    mode: &'a str,
    max_bytes: u64,
}

fn write_config(path: &Path, c: &AgentConf) -> anyhow::Result<()> {
    let max_frames = c
        .max_frames
        .map_or(String::new(), |n| format!("max_frames = {n}\n"));
    std::fs::write(
        path,
        format!(
            r#"data_dir = {data}
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
[[camera]]
id = "{CAMERA}"
{max_frames}source = {{ kind = "test_pattern", width = {WIDTH}, height = {HEIGHT}, fps = {FPS}, unpaced = {unpaced} }}
encoder = {{ bitrate_kbps = {KBPS}, keyframe_interval_frames = {GOP} }}
[spool]
mode = "{mode}"
max_bytes = {max_bytes}
switch_after_ms = 500
[http]
listen = ""
"#,
            data = crate::agent::toml_path(c.data),
            bootstrap = c.bootstrap,
            topic = c.topic,
            unpaced = c.unpaced,
            mode = c.mode,
            max_bytes = c.max_bytes,
        ),
    )?;
    Ok(())
}

/// A running agent. Its stderr is copied to the log by a thread of this
/// process, so the log's writes are not charged to the agent's `write_bytes`.
struct Running {
    child: Child,
    start: Instant,
    log: PathBuf,
    stdout: std::thread::JoinHandle<std::io::Result<String>>,
    stderr: std::thread::JoinHandle<()>,
}

struct Exited {
    summary: Option<serde_json::Value>,
    cpu: Duration,
    wall: Duration,
    log: String,
}

impl Exited {
    fn u64(&self, key: &str) -> u64 {
        self.summary
            .as_ref()
            .and_then(|s| s[key].as_u64())
            .unwrap_or(0)
    }
}

fn spawn_agent(agent: &Path, config: &Path, log: &Path) -> anyhow::Result<Running> {
    let start = Instant::now();
    let mut child = Command::new(agent)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", agent.display()))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut err = child.stderr.take().expect("stderr is piped");
    let mut file = std::fs::File::create(log)?;
    let stderr = std::thread::spawn(move || {
        let _ = std::io::copy(&mut err, &mut file);
    });
    Ok(Running {
        child,
        start,
        log: log.to_path_buf(),
        stdout,
        stderr,
    })
}

impl Running {
    fn proc(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).ok()
    }

    /// Bytes this process caused to be written to storage (`/proc/<pid>/io`).
    fn write_bytes(&self) -> Option<u64> {
        self.proc("io")?
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))?
            .trim()
            .parse()
            .ok()
    }

    /// User + system CPU of all its threads so far (`/proc/<pid>/stat`, 10 ms ticks).
    fn cpu(&self) -> Option<Duration> {
        let stat = self.proc("stat")?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    fn vm_hwm_kb(&self) -> Option<u64> {
        self.proc("status").as_deref().and_then(crate::agent::vm_hwm_kb)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: the pid is our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the exit (after `signal`, or the end of a finite source).
    fn wait(self) -> anyhow::Result<Exited> {
        let (status, cpu) = wait_with_cpu(self.child)?;
        let wall = self.start.elapsed();
        let out = self.stdout.join().expect("stdout thread")?;
        self.stderr.join().expect("stderr thread");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let killed = status.code().is_none();
        if !status.success() && !killed {
            bail!(
                "agent exited with {status}; log {}:\n{log}",
                self.log.display()
            );
        }
        let summary = out
            .lines()
            .next()
            .map(serde_json::from_str)
            .transpose()
            .context("agent summary is not JSON")?;
        Ok(Exited {
            summary,
            cpu,
            wall,
            log,
        })
    }
}

/// `camfleet-agent spool status --json`: the camera's (frames, record bytes)
/// and the database's bytes on disk.
fn spool_status(agent: &Path, config: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let out = Command::new(agent)
        .args(["spool", "status", "--json", "--config"])
        .arg(config)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("spool status failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(camera_status(&v).map_or((0, 0, 0), |(frames, bytes, _)| {
        (frames, bytes, v["disk_bytes"].as_u64().unwrap_or(0))
    }))
}

/// The camera's (frames, bytes, route) in a status report.
fn camera_status(v: &serde_json::Value) -> Option<(u64, u64, String)> {
    let c = v["cameras"]
        .as_array()?
        .iter()
        .find(|c| c["camera"] == CAMERA)?;
    Some((
        c["frames"].as_u64()?,
        c["bytes"].as_u64()?,
        c["route"].as_str().unwrap_or("").to_string(),
    ))
}

/// Seconds since midnight UTC of a log line (`2026-11-30T14:24:46.883031Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `key=value` of a log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

// ---------------------------------------------------------------- 1. drain

async fn drain(
    kafka: &Kafka,
    args: &Args,
    dir: &Path,
    results: Option<&Path>,
) -> anyhow::Result<()> {
    let run = dir.join("drain");
    fresh_dir(&run)?;
    let data = run.join("data");
    let backlog_frames = args.backlog_s * FPS as u64;
    let base = AgentConf {
        data: &data,
        bootstrap: DEAD_BROKER,
        topic: "bench.spool.offline",
        max_frames: Some(backlog_frames),
        unpaced: true,
        mode: "outage",
        max_bytes: 2 << 30,
    };
    // Offline: every frame goes to the spool; the agent exits at the end of
    // the source, leaving them there.
    let fill_cfg = run.join("fill.toml");
    write_config(&fill_cfg, &base)?;
    let (agent, fill_cfg2, log) = (args.agent.clone(), fill_cfg.clone(), run.join("fill.log"));
    let fill = tokio::task::spawn_blocking(move || spawn_agent(&agent, &fill_cfg2, &log)?.wait())
        .await??;
    let (frames, bytes, disk) = spool_status(&args.agent, &fill_cfg)?;
    if frames == 0 {
        bail!("the offline run spooled nothing; log {}", run.join("fill.log").display());
    }

    // Online: the same spool, the real broker, a live (paced) camera.
    let topic = kafka.fresh_topic("spool").await?;
    let cfg = run.join("drain.toml");
    write_config(
        &cfg,
        &AgentConf {
            bootstrap: &kafka.bootstrap,
            topic: &topic,
            max_frames: None,
            unpaced: false,
            ..base
        },
    )?;
    let agent = spawn_agent(&args.agent, &cfg, &run.join("drain.log"))?;
    let spool_dir = data.join("spool");
    let limit = Duration::from_secs(args.backlog_s.max(30));
    let mut polled_drained = None;
    let mut remaining = frames;
    while agent.start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((n, _, route)) = control::query(&spool_dir, "status")
            .await
            .as_ref()
            .and_then(camera_status)
        {
            remaining = n;
            if route == "direct" {
                polled_drained = Some(agent.start.elapsed());
                break;
            }
        }
    }
    // A second of live frames sent directly, then a clean stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.signal(libc::SIGTERM);
    let live = tokio::task::spawn_blocking(move || agent.wait()).await??;
    kafka.delete_topic(&topic).await?;

    let opened = live.log.lines().find(|l| l.contains("spool opened"));
    let drained_line = live.log.lines().find(|l| l.contains("spool drained"));
    let open_ms = opened.and_then(|l| log_field(l, "ms"));
    let by_log = match (opened.and_then(log_time), drained_line.and_then(log_time)) {
        (Some(a), Some(b)) => Some(if b >= a { b - a } else { b + 86400.0 - a }),
        _ => None,
    };
    let drained = live.u64("frames_drained");
    // Live frames that went through the spool while it drained are the
    // same encoder's frames: the live run's mean size stands for them.
    let live_mean = live.u64("bytes_encoded") as f64 / live.u64("frames_encoded").max(1) as f64;
    let drained_bytes = bytes as f64 + drained.saturating_sub(frames) as f64 * live_mean;
    let seconds = by_log.or(polled_drained.map(|d| d.as_secs_f64()));

    // Peer: the same number of records and bytes, one producer, as fast as it goes.
    let records = drained.max(frames);
    let size = (drained_bytes / records as f64).round() as usize;
    let peer = kafka_peer(kafka, records, size).await?;

    let video_s = frames as f64 / FPS as f64;
    let mut t = Table::new(
        format!(
            "spool drain after a {} s outage: {WIDTH}x{HEIGHT} test pattern at {FPS} fps, {} Mbit/s, live video flowing, loopback Kafka",
            f(video_s, 0),
            KBPS / 1000
        ),
        &[
            "path",
            "frames",
            "MB",
            "seconds",
            "x real time",
            "MB/s",
            "vs Kafka alone",
        ],
    );
    let peer_mbs = drained_bytes / MB / peer.as_secs_f64();
    match seconds {
        Some(s) if polled_drained.is_some() => {
            let mbs = drained_bytes / MB / s;
            t.row(vec![
                format!("agent: drain {frames} spooled frames while live frames join the spool (spool opened -> drained)"),
                drained.to_string(),
                f(drained_bytes / MB, 1),
                f(s, 2),
                format!("{}x", f(video_s / s, 1)),
                f(mbs, 1),
                format!("{}%", f(mbs / peer_mbs * 100.0, 0)),
            ]);
        }
        _ => t.row(vec![
            format!(
                "agent: NOT drained after {} s ({remaining} of {frames} frames left)",
                limit.as_secs()
            ),
            drained.to_string(),
            f(drained_bytes / MB, 1),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ]),
    }
    t.row(vec![
        "loopback Kafka alone: one rdkafka producer, agent's settings, same records' bytes".into(),
        records.to_string(),
        f(drained_bytes / MB, 1),
        f(peer.as_secs_f64(), 2),
        format!("{}x", f(video_s / peer.as_secs_f64(), 1)),
        f(peer_mbs, 1),
        "100%".into(),
    ]);
    t.note(format!(
        "backlog: {frames} frames, {} MB of records, {} MB on disk; filled offline (dead bootstrap, unpaced) in {} s, of which up to 7 s is the shutdown flush waiting on the dead broker",
        f(bytes as f64 / MB, 1),
        f(disk as f64 / MB, 1),
        f(fill.wall.as_secs_f64(), 1),
    ));
    t.note(format!(
        "x real time = {} s of backlog / seconds; the agent's time is from its `spool opened` to its `spool drained` log line (spool opened in {} ms); polled from process start it was {} s",
        f(video_s, 0),
        open_ms.unwrap_or("?"),
        polled_drained.map_or("-".into(), |d| f(d.as_secs_f64(), 1)),
    ));
    t.note(format!(
        "live run: {} frames encoded, {} drained from the spool, {} acked directly after the drain, {} failed, {} evicted; the peer sends {records} records of {size} bytes (acks=all, idempotent, linger 0) with no encoder running beside it",
        live.u64("frames_encoded"),
        drained,
        live.u64("frames_acked"),
        live.u64("frames_failed") + fill.u64("frames_failed"),
        live.u64("frames_evicted") + fill.u64("frames_evicted"),
    ));
    t.emit(results)
}

/// Sends `records` records of `size` bytes with the agent's producer
/// settings to a fresh topic as fast as the producer takes them; returns the
/// time from creating the producer to the last acknowledgement.
async fn kafka_peer(kafka: &Kafka, records: u64, size: usize) -> anyhow::Result<Duration> {
    let topic = kafka.fresh_topic("spool-peer").await?;
    let cfg: AgentKafkaConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": kafka.bootstrap,
        "topic": topic,
    }))?;
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 13) as u8).collect();
    let start = Instant::now();
    let producer: FutureProducer = camfleet_agent::sink::kafka::producer_config(&cfg).create()?;
    let mut pending = VecDeque::new();
    let mut sent = 0;
    while sent < records {
        let rec = FutureRecord::<str, [u8]>::to(&topic)
            .key(CAMERA)
            .payload(&payload);
        match producer.send_result(rec) {
            Ok(fut) => {
                pending.push_back(fut);
                sent += 1;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The local queue is full: wait for the oldest acknowledgement.
                match pending.pop_front() {
                    Some(fut) => check_delivery(fut.await)?,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
    for fut in pending {
        check_delivery(fut.await)?;
    }
    let took = start.elapsed();
    drop(producer);
    kafka.delete_topic(&topic).await?;
    Ok(took)
}

fn check_delivery<E>(
    r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) -> anyhow::Result<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => bail!("delivery: {e}"),
        Err(_) => bail!("delivery canceled"),
    }
}
