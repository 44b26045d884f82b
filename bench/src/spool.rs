//! `spool`: the agent's disk spool (agent/src/spool), four measurements.
//!
//! 1. Drain: the agent binary fills a spool offline (dead bootstrap, unpaced
//!    720p test pattern at 2 Mbit/s, N s of video), then starts again paced
//!    against the loopback broker; the time from its "spool opened" to its
//!    "spool drained" log line is the drain; the records' broker append
//!    times (a `LogAppendTime` topic) split it into phases. Peer: one
//!    rdkafka producer with the agent's producer settings sending the same
//!    records' bytes, as fast as it can and with the agent's drain window,
//!    in this process; and the store's side alone (read back, delete) on a
//!    copy of the same backlog.
//! 2. Write cost: the same real encoded frames written through `SledStore`
//!    (the `SpoolStore` trait), bare sled with the store's sled settings
//!    (plain inserts, and the store's first layout: frame and high-water key
//!    in one batch of one tree), and a plain file with
//!    `fdatasync` (and with `sync_file_range`, which is what sled's flush
//!    calls), each flushed per frame (`always` mode) and every 6 frames
//!    (200 ms at 30 fps, the `outage` default).
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
/// Frames the agent's drain keeps in flight (agent/src/spool/mod.rs `DRAIN_WINDOW_FRAMES`).
const DRAIN_WINDOW: usize = 256;
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

    let (sizes, dir2) = (args.recovery_mb.clone(), dir.clone());
    let rows = tokio::task::spawn_blocking(move || recovery(&dir2, killed, &sizes)).await??;
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
            ..EncoderConfig::default()
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
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    fn vm_hwm_kb(&self) -> Option<u64> {
        self.proc("status")
            .as_deref()
            .and_then(crate::agent::vm_hwm_kb)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: the pid is our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the exit (after `signal`, or the end of a finite source).
    fn wait(self) -> anyhow::Result<Exited> {
        let (status, _) = wait_with_cpu(self.child)?;
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
        Ok(Exited { summary, wall, log })
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
        bail!(
            "the offline run spooled nothing; log {}",
            run.join("fill.log").display()
        );
    }
    // A copy for the store-alone drain below.
    let copy = run.join("spool-copy");
    copy_dir(&data.join("spool"), &copy)?;

    // Online: the same spool, the real broker, a live (paced) camera.
    // Broker append times on the records show when the backlog went out.
    let topic = kafka
        .fresh_topic_with("spool", &[("message.timestamp.type", "LogAppendTime")])
        .await?;
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
    let appended = append_times(kafka, &topic).await?;
    kafka.delete_topic(&topic).await?;

    let opened = live.log.lines().find(|l| l.contains("spool opened"));
    let drained_line = live.log.lines().find(|l| l.contains("spool drained"));
    let open_ms = opened.and_then(|l| log_field(l, "ms"));
    // Seconds from a to b, both seconds since midnight UTC.
    let since = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(if b >= a { b - a } else { b + 86400.0 - a }),
        _ => None,
    };
    let by_log = since(opened.and_then(log_time), drained_line.and_then(log_time));
    let drained = live.u64("frames_drained");
    // Live frames that went through the spool while it drained are the
    // same encoder's frames: the live run's mean size stands for them.
    let live_mean = live.u64("bytes_encoded") as f64 / live.u64("frames_encoded").max(1) as f64;
    let drained_bytes = bytes as f64 + drained.saturating_sub(frames) as f64 * live_mean;
    let seconds = by_log.or(polled_drained.map(|d| d.as_secs_f64()));
    // Phases, on the broker's clock: first record in, last backlog record in,
    // last spooled live record in.
    let live_first = live.u64("seq_first");
    let at = |seq: u64| appended.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t);
    let first_in = appended.iter().map(|(_, t)| *t).reduce(f64::min);
    let backlog_in = live_first.checked_sub(1).and_then(at);
    let send_backlog = since(first_in, backlog_in);

    // Peer: the same number of records and bytes, one producer, as fast as it goes.
    let records = drained.max(frames);
    let size = (drained_bytes / records as f64).round() as usize;
    let peer = kafka_peer(kafka, records, size, None).await?;
    let peer_window = kafka_peer(kafka, records, size, Some(DRAIN_WINDOW)).await?;
    // The spool's side of a drain alone: read each frame back, delete it.
    let copy2 = copy.clone();
    let (store_n, store_bytes, store_t) =
        tokio::task::spawn_blocking(move || store_drain(&copy2)).await??;
    std::fs::remove_dir_all(&copy)?;

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
    if let Some(sb) = send_backlog.filter(|s| *s > 0.0) {
        let mbs = bytes as f64 / MB / sb;
        t.row(vec![
            "agent, sending the backlog only (first -> last backlog record appended, broker clock)"
                .into(),
            frames.to_string(),
            f(bytes as f64 / MB, 1),
            f(sb, 2),
            format!("{}x", f(video_s / sb, 1)),
            f(mbs, 1),
            format!("{}%", f(mbs / peer_mbs * 100.0, 0)),
        ]);
    }
    let store_mbs = store_bytes as f64 / MB / store_t.as_secs_f64();
    t.row(vec![
        "spool store alone: get_frame + remove_frames per frame, same backlog, no Kafka".into(),
        store_n.to_string(),
        f(store_bytes as f64 / MB, 1),
        f(store_t.as_secs_f64(), 2),
        format!("{}x", f(video_s / store_t.as_secs_f64(), 1)),
        f(store_mbs, 1),
        format!("{}%", f(store_mbs / peer_mbs * 100.0, 0)),
    ]);
    t.row(vec![
        "loopback Kafka alone: one rdkafka producer, agent's settings, same records' bytes".into(),
        records.to_string(),
        f(drained_bytes / MB, 1),
        f(peer.as_secs_f64(), 2),
        format!("{}x", f(video_s / peer.as_secs_f64(), 1)),
        f(peer_mbs, 1),
        "100%".into(),
    ]);
    let win_mbs = drained_bytes / MB / peer_window.as_secs_f64();
    t.row(vec![
        format!("loopback Kafka alone, at most {DRAIN_WINDOW} records in flight (the agent's drain window)"),
        records.to_string(),
        f(drained_bytes / MB, 1),
        f(peer_window.as_secs_f64(), 2),
        format!("{}x", f(video_s / peer_window.as_secs_f64(), 1)),
        f(win_mbs, 1),
        format!("{}%", f(win_mbs / peer_mbs * 100.0, 0)),
    ]);
    t.note(format!(
        "backlog: {frames} frames, {} MB of records, {} MB on disk; filled offline (dead bootstrap, unpaced source) in {} s, start to exit",
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
    let fmt = |x: Option<f64>| x.map_or("?".into(), |x| f(x, 2));
    t.note(format!(
        "where the agent's time goes: {} s from `spool opened` to the first record appended (connecting, producer id, first reads), {} s sending the backlog, {} s from the last backlog record to `spool drained` (live frames that joined the spool wait for its flush, every 200 ms in outage mode, before they may be sent; the camera goes back to direct once the spool is empty)",
        fmt(since(opened.and_then(log_time), first_in)),
        fmt(send_backlog),
        fmt(since(backlog_in, drained_line.and_then(log_time))),
    ));
    t.note(format!(
        "live run: {} frames encoded, {} drained from the spool, {} acked directly after the drain, {} failed, {} evicted; the peer sends {records} records of {size} bytes (acks=all, idempotent, linger 0), timed after one warm-up record, with no encoder running beside it; the agent's time includes connecting to the broker",
        live.u64("frames_encoded"),
        drained,
        live.u64("frames_acked"),
        live.u64("frames_failed") + fill.u64("frames_failed"),
        live.u64("frames_evicted") + fill.u64("frames_evicted"),
    ));
    t.emit(results)
}

/// (cf.seq, broker append time as seconds since midnight UTC) of every
/// record of a `LogAppendTime` topic, read from the beginning until idle.
async fn append_times(kafka: &Kafka, topic: &str) -> anyhow::Result<Vec<(u64, f64)>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", format!("{topic}.bench"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let idle = if out.is_empty() { 10 } else { 1 };
        let msg = match tokio::time::timeout(Duration::from_secs(idle), consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => bail!("consume: {e}"),
            Ok(Ok(m)) => m,
        };
        let seq = msg.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == camfleet_shared::wire::header::SEQ)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        });
        if let (Some(seq), Some(ms)) = (seq, msg.timestamp().to_millis()) {
            out.push((seq, (ms.rem_euclid(86_400_000)) as f64 / 1e3));
        }
    }
    Ok(out)
}

/// Copies the regular files under `from` (the socket of a stopped agent is skipped).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        let (p, t) = (e.path(), e.file_type()?);
        if t.is_dir() {
            copy_dir(&p, &to.join(e.file_name()))?;
        } else if t.is_file() {
            std::fs::copy(&p, to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// What the agent's drain does to the store, without Kafka: opens the
/// spool, then per frame in order reads it back (`get_frame`, checksum
/// checked) and deletes it (`remove_frames`). Returns (frames, payload
/// bytes, time after the open).
fn store_drain(spool: &Path) -> anyhow::Result<(u64, u64, Duration)> {
    let (store, rec) = SledStore::open(spool)?;
    let t = Instant::now();
    let mut bytes = 0u64;
    for (cam, seq, _, _) in &rec.frames {
        if let Some((_, payload)) = store.get_frame(cam, *seq)? {
            bytes += payload.len() as u64;
        }
        store.remove_frames(cam, &[*seq])?;
    }
    Ok((rec.frames.len() as u64, bytes, t.elapsed()))
}

/// Sends `records` records of `size` bytes with the agent's producer
/// settings to a fresh topic as fast as the producer takes them; returns the
/// time from the first send to the last acknowledgement (after one warm-up
/// record, so connecting is not counted).
async fn kafka_peer(
    kafka: &Kafka,
    records: u64,
    size: usize,
    window: Option<usize>,
) -> anyhow::Result<Duration> {
    let topic = kafka.fresh_topic("spool-peer").await?;
    let cfg: AgentKafkaConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": kafka.bootstrap,
        "topic": topic,
    }))?;
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 13) as u8).collect();
    let producer: FutureProducer = camfleet_agent::sink::kafka::producer_config(&cfg)?.create()?;
    // Connected, with a producer id and the topic's leader, before the clock starts.
    let warm = FutureRecord::<str, [u8]>::to(&topic)
        .key(CAMERA)
        .payload(&payload);
    producer
        .send(warm, Duration::from_secs(20))
        .await
        .map_err(|(e, _)| e)
        .context("warm-up record")?;
    let start = Instant::now();
    let mut pending = VecDeque::new();
    let mut sent = 0;
    while sent < records {
        if window.is_some_and(|w| pending.len() >= w) {
            let fut = pending.pop_front().expect("window > 0");
            check_delivery(fut.await)?;
        }
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

// ---------------------------------------------------------------- 2. write cost

#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Store,
    Sled,
    SledBatch,
    File,
    FileRange,
}

impl Writer {
    fn name(self) -> &'static str {
        match self {
            Writer::Store => "spool store (SledStore::put_frame, SpoolStore::flush)",
            Writer::Sled => "bare sled, store's settings (Db::insert, Db::flush)",
            Writer::SledBatch => {
                "bare sled, frame + high-water key in one Batch (the store's first layout)"
            }
            Writer::File => "plain file (append + crc32 header, fdatasync)",
            Writer::FileRange => {
                "plain file, sync_file_range instead (what sled's flush calls on Linux)"
            }
        }
    }
}

struct WriteRow {
    writer: Writer,
    every: u64,
    frames: u64,
    payload: u64,
    wall: Duration,
    cpu: Duration,
    written: u64,
}

/// Bytes this process caused to be written to storage.
fn self_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The store's sled settings (agent/src/spool/store.rs `sled_config`).
fn bare_sled(path: &Path) -> anyhow::Result<sled::Db> {
    Ok(sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(16 << 20)
        .mode(sled::Mode::LowSpace)
        .open()?)
}

fn write_cost(dir: &Path, frames: &[Frame], n: u64) -> anyhow::Result<Vec<WriteRow>> {
    let camera = CameraId::new(CAMERA)?;
    let mut rows = Vec::new();
    for every in [1u64, 6] {
        for writer in [
            Writer::Store,
            Writer::Sled,
            Writer::SledBatch,
            Writer::File,
            Writer::FileRange,
        ] {
            let d = dir.join("write");
            fresh_dir(&d)?;
            rows.push(write_one(writer, &d, frames, n, every, &camera)?);
            std::fs::remove_dir_all(&d)?;
        }
    }
    Ok(rows)
}

fn write_one(
    writer: Writer,
    dir: &Path,
    frames: &[Frame],
    n: u64,
    every: u64,
    camera: &CameraId,
) -> anyhow::Result<WriteRow> {
    // Opening is not timed.
    let store = (writer == Writer::Store)
        .then(|| SledStore::open(dir).map(|s| s.0))
        .transpose()?;
    let db = matches!(writer, Writer::Sled | Writer::SledBatch)
        .then(|| bare_sled(&dir.join("db")))
        .transpose()?;
    let mut file = matches!(writer, Writer::File | Writer::FileRange)
        .then(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join("spool.log"))
        })
        .transpose()?;
    let flush = |file: &mut Option<std::fs::File>| -> anyhow::Result<()> {
        if let Some(s) = &store {
            s.flush()?;
        }
        if let Some(db) = &db {
            db.flush()?;
        }
        if let Some(f) = file {
            if writer == Writer::File {
                f.sync_data()?;
            } else {
                use std::os::fd::AsRawFd;
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // SAFETY: a valid open fd; offset 0, length 0 = the whole file.
                if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
        }
        Ok(())
    };
    let mut payload = 0u64;
    let (w0, c0, t0) = (self_write_bytes(), process_cpu(), Instant::now());
    for i in 0..n {
        let (p, key) = &frames[i as usize % frames.len()];
        if let Some(s) = &store {
            s.put_frame(&meta(camera, i, *key), p)?;
        }
        if let Some(db) = &db {
            let key = camfleet_agent::spool::record::frame_key(camera, i);
            if writer == Writer::Sled {
                db.insert(key, p.as_slice())?;
            } else {
                let high = camfleet_agent::spool::record::high_key(camera);
                let _ = db.get(&high)?;
                let mut batch = sled::Batch::default();
                batch.insert(key, p.as_slice());
                batch.insert(high, &i.to_be_bytes());
                db.apply_batch(batch)?;
            }
        }
        if let Some(f) = &mut file {
            // seq, length, crc32 of the payload: what a hand-rolled log needs.
            let mut head = [0u8; 16];
            head[..8].copy_from_slice(&i.to_le_bytes());
            head[8..12].copy_from_slice(&(p.len() as u32).to_le_bytes());
            head[12..].copy_from_slice(&crc32fast::hash(p).to_le_bytes());
            f.write_all(&head)?;
            f.write_all(p)?;
        }
        payload += p.len() as u64;
        if (i + 1).is_multiple_of(every) {
            flush(&mut file)?;
        }
    }
    if !n.is_multiple_of(every) {
        flush(&mut file)?;
    }
    let (wall, cpu) = (t0.elapsed(), process_cpu() - c0);
    let written = self_write_bytes().saturating_sub(w0);
    Ok(WriteRow {
        writer,
        every,
        frames: n,
        payload,
        wall,
        cpu,
        written,
    })
}

fn write_cost_table(
    rows: &[WriteRow],
    n: u64,
    frames: &[Frame],
    results: Option<&Path>,
) -> anyhow::Result<()> {
    let mean = frames.iter().map(|f| f.0.len()).sum::<usize>() as f64 / frames.len() as f64;
    let idr = frames
        .iter()
        .filter(|f| f.1)
        .map(|f| f.0.len())
        .max()
        .unwrap_or(0);
    let mut t = Table::new(
        format!(
            "spool write cost: {n} real 720p {} Mbit/s frames (mean {} KB, IDR {} KB every {GOP}), flushed per frame and every 6 frames",
            KBPS / 1000,
            f(mean / 1e3, 1),
            f(idr as f64 / 1e3, 1)
        ),
        &[
            "writer",
            "flush every",
            "MB/s",
            "frames/s",
            "CPU us/frame",
            "disk writes / payload",
            "MB/s vs file",
            "CPU vs file",
        ],
    );
    for r in rows {
        let file = rows
            .iter()
            .find(|x| x.writer == Writer::File && x.every == r.every)
            .expect("a file row per cadence");
        let mbs = |r: &WriteRow| r.payload as f64 / MB / r.wall.as_secs_f64();
        let cpu_us = |r: &WriteRow| r.cpu.as_secs_f64() * 1e6 / r.frames as f64;
        t.row(vec![
            r.writer.name().into(),
            match r.every {
                1 => "1 frame (always)".into(),
                k => format!("{k} frames (outage, 200 ms)"),
            },
            f(mbs(r), 1),
            f(r.frames as f64 / r.wall.as_secs_f64(), 0),
            f(cpu_us(r), 0),
            format!("{}x", f(r.written as f64 / r.payload as f64, 2)),
            format!("{}x", f(mbs(r) / mbs(file), 2)),
            format!("{}x", f(cpu_us(r) / cpu_us(file), 2)),
        ]);
    }
    t.note(
        "one thread writes unpaced; MB/s counts payload bytes over wall time including every flush",
    );
    t.note("bare sled's flush calls sync_file_range on the log, not fsync/fdatasync (sled 0.34 pagecache/iobuf.rs), which neither commits file metadata nor flushes the drive's write cache, and it never syncs blob files; the spool store's flush adds fdatasync of the log and fsync of new blob files, so it and the fdatasync file are the durable ones");
    t.note("CPU is this whole process (CLOCK_PROCESS_CPUTIME_ID), so sled's own threads count; kernel writeback threads do not");
    t.note("disk writes = this process's write_bytes from /proc/self/io over the loop, over the payload bytes (a partly filled page rewritten after each flush counts again)");
    t.emit(results)
}

// ---------------------------------------------------------------- 3. per mode

struct ModeRow {
    label: &'static str,
    window: Duration,
    written: u64,
    cpu: Duration,
    hwm_kb: u64,
    video_bytes_per_s: f64,
    frames: String,
}

/// Runs the agent in each configuration; returns the spool directory of
/// the dead-broker run, which ends with SIGKILL.
async fn modes(
    kafka: &Kafka,
    args: &Args,
    dir: &Path,
    results: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let topic = kafka.fresh_topic("spool-modes").await?;
    let configs = [
        (
            "outage mode, broker up (frames go direct; spool idle)",
            "outage",
            true,
        ),
        (
            "always mode, broker up (each frame written, flushed, sent, deleted)",
            "always",
            true,
        ),
        (
            "outage mode, broker down (every frame spooled)",
            "outage",
            false,
        ),
    ];
    let warm = Duration::from_secs(if args.mode_s >= 12 { 3 } else { 2 });
    let total = Duration::from_secs(args.mode_s).max(warm + Duration::from_secs(2));
    let mut rows = Vec::new();
    let mut killed = None;
    for (i, (label, mode, up)) in configs.into_iter().enumerate() {
        let run = dir.join(format!("mode-{i}"));
        fresh_dir(&run)?;
        let data = run.join("data");
        let cfg = run.join("agent.toml");
        write_config(
            &cfg,
            &AgentConf {
                data: &data,
                bootstrap: if up { &kafka.bootstrap } else { DEAD_BROKER },
                topic: &topic,
                max_frames: None,
                unpaced: false,
                mode,
                max_bytes: 2 << 30,
            },
        )?;
        let agent = spawn_agent(&args.agent, &cfg, &run.join("agent.log"))?;
        tokio::time::sleep(warm).await;
        let (w0, c0, t0) = (agent.write_bytes(), agent.cpu(), Instant::now());
        tokio::time::sleep(total - warm).await;
        let (w1, c1, t1) = (agent.write_bytes(), agent.cpu(), Instant::now());
        let hwm_kb = agent.vm_hwm_kb().unwrap_or(0);
        let (Some(w0), Some(w1), Some(c0), Some(c1)) = (w0, w1, c0, c1) else {
            agent.signal(libc::SIGKILL);
            let _ = tokio::task::spawn_blocking(move || agent.wait()).await?;
            bail!(
                "cannot read /proc of the agent (did it exit early?); log {}",
                run.join("agent.log").display()
            );
        };
        // Broker down: a crash while spooling, which the recovery test reopens.
        agent.signal(if up { libc::SIGTERM } else { libc::SIGKILL });
        let ex = tokio::task::spawn_blocking(move || agent.wait()).await??;
        let (video_bytes_per_s, frames) = if up {
            (
                ex.u64("bytes_encoded") as f64 / ex.u64("frames_encoded").max(1) as f64
                    * FPS as f64,
                format!(
                    "{} / {} / {}",
                    ex.u64("frames_acked"),
                    ex.u64("frames_spooled"),
                    ex.u64("frames_drained")
                ),
            )
        } else {
            let (n, bytes, _) = spool_status(&args.agent, &cfg)?;
            killed = Some(data.join("spool"));
            (
                bytes as f64 / n.max(1) as f64 * FPS as f64,
                format!("0 / {n} in the spool / 0"),
            )
        };
        rows.push(ModeRow {
            label,
            window: t1 - t0,
            written: w1 - w0,
            cpu: c1.saturating_sub(c0),
            hwm_kb,
            video_bytes_per_s,
            frames,
        });
    }
    kafka.delete_topic(&topic).await?;

    let mut t = Table::new(
        format!(
            "agent disk writes, CPU and RSS per spool mode: {WIDTH}x{HEIGHT} test pattern at {FPS} fps, {} Mbit/s, paced, {} s runs",
            KBPS / 1000,
            total.as_secs()
        ),
        &[
            "configuration",
            "disk writes MB/hour",
            "x video bytes",
            "CPU % of a core",
            "CPU vs spool idle",
            "peak RSS MB",
            "frames acked direct / spooled / drained",
        ],
    );
    let base = rows[0].cpu.as_secs_f64() / rows[0].window.as_secs_f64();
    for r in &rows {
        let w = r.window.as_secs_f64();
        let cpu = r.cpu.as_secs_f64() / w;
        t.row(vec![
            r.label.into(),
            f(r.written as f64 / w * 3600.0 / MB, 0),
            format!("{}x", f(r.written as f64 / w / r.video_bytes_per_s, 2)),
            f(cpu * 100.0, 1),
            format!("{}x", f(cpu / base, 2)),
            f(r.hwm_kb as f64 / 1024.0, 1),
            r.frames.clone(),
        ]);
    }
    t.note(format!(
        "disk writes = write_bytes of /proc/<pid>/io and CPU = utime+stime of /proc/<pid>/stat, from {} s after start to just before the stop, scaled to an hour; the video itself is {} MB/hour",
        warm.as_secs(),
        f(rows[0].video_bytes_per_s * 3600.0 / MB, 0)
    ));
    t.note("the agent's log goes through a pipe to this process, so it is not counted; its sequence-state file is");
    t.note("peak RSS = VmHWM just before the stop; the broker-down run is stopped with SIGKILL (its spool is reopened in the recovery table), the others with SIGTERM");
    t.emit(results)?;
    killed.context("no broker-down run")
}

// ---------------------------------------------------------------- 4. recovery

struct RecoveryRow {
    label: String,
    disk: u64,
    frames: u64,
    live: u64,
    open: Duration,
    reclaimed: Option<(u64, u64)>,
    read: Duration,
    reopen: Duration,
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Drops the page cache of the files under `dir` (written back first), as
/// a reboot would, without touching anything else on the machine.
fn drop_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    for p in files(dir) {
        if let Ok(f) = std::fs::File::open(&p) {
            let _ = f.sync_data();
            // SAFETY: a valid open fd; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn read_all(dir: &Path) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for p in files(dir) {
        let mut f = std::fs::File::open(&p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

fn timed_open(spool: &Path) -> anyhow::Result<(Duration, camfleet_agent::spool::store::Recovered)> {
    drop_cache(&spool.join("db"));
    let t = Instant::now();
    let (store, rec) = SledStore::open(spool)?;
    let took = t.elapsed();
    drop(store);
    Ok((took, rec))
}

fn measure_recovery(label: String, spool: &Path) -> anyhow::Result<RecoveryRow> {
    let db = spool.join("db");
    let disk = du(&db);
    drop_cache(&db);
    let t = Instant::now();
    read_all(&db)?;
    let read = t.elapsed();
    let (open, rec) = timed_open(spool)?;
    // The first open left it cleanly closed: the same data without a crash.
    let (reopen, _) = timed_open(spool)?;
    Ok(RecoveryRow {
        label,
        disk,
        frames: rec.frames.len() as u64,
        live: rec.frames.iter().map(|f| f.3).sum(),
        open,
        reclaimed: rec.reclaimed,
        read,
        reopen,
    })
}

fn recovery(dir: &Path, killed: PathBuf, sizes_mb: &[u64]) -> anyhow::Result<Vec<RecoveryRow>> {
    let mut rows = vec![measure_recovery(
        "agent binary, broker down, SIGKILLed (the per-mode run)".into(),
        &killed,
    )?];
    for &mb in sizes_mb {
        let d = dir.join("recovery").join(format!("{mb}mb"));
        fresh_dir(&d)?;
        let t = Instant::now();
        let frames = fill_and_kill(dir, &d, mb * 1_000_000)?;
        rows.push(measure_recovery(
            format!(
                "spool-fill writer, {frames} frames to {mb} MB in {} s, SIGKILLed while writing",
                f(t.elapsed().as_secs_f64(), 1)
            ),
            &d,
        )?);
        std::fs::remove_dir_all(&d)?;
    }
    Ok(rows)
}

/// Runs `camfleet-bench spool-fill` on `spool` until it has flushed
/// `bytes` of frames, then SIGKILLs it mid-write. Returns the frames it reported.
fn fill_and_kill(work_spool: &Path, spool: &Path, bytes: u64) -> anyhow::Result<u64> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--work-dir")
        .arg(work_spool)
        .arg("spool-fill")
        .arg("--dir")
        .arg(spool)
        .arg("--bytes")
        .arg(bytes.to_string())
        .arg("--frames-file")
        .arg(work_spool.join("frames.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    child.kill()?;
    let status = child.wait()?;
    let frames = line
        .strip_prefix("filled ")
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("spool-fill did not report (exit {status}): {line:?}"))?;
    Ok(frames)
}

/// `camfleet-bench spool-fill`: writes real frames through `SledStore` as
/// fast as it can, flushing every 200 ms like the outage-mode flusher; after
/// the first flush with `bytes` of frames it prints `filled <frames> <bytes>`
/// and keeps writing, to be killed mid-write (it exits by itself 2 s later).
pub fn fill(dir: &Path, bytes: u64, frames_file: &Path) -> anyhow::Result<()> {
    let frames = load_frames(frames_file)?;
    let camera = CameraId::new(CAMERA)?;
    let (store, _) = SledStore::open(dir)?;
    let mut live = 0u64;
    let mut flushed = Instant::now();
    let mut announced: Option<Instant> = None;
    let mut out = std::io::stdout();
    for seq in 0.. {
        let (p, key) = &frames[seq as usize % frames.len()];
        live += store.put_frame(&meta(&camera, seq, *key), p)?;
        if flushed.elapsed() >= Duration::from_millis(200) {
            store.flush()?;
            flushed = Instant::now();
            if announced.is_none() && live >= bytes {
                writeln!(out, "filled {} {live}", seq + 1)?;
                out.flush()?;
                announced = Some(Instant::now());
            }
        }
        if announced.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
    }
    Ok(())
}

fn recovery_table(rows: &[RecoveryRow], results: Option<&Path>) -> anyhow::Result<()> {
    let mut t = Table::new(
        "spool recovery after SIGKILL: SledStore::open (sled log replay + scan of every record), page cache of the spool dropped",
        &[
            "spool left by",
            "frames",
            "live MB",
            "disk MB",
            "open ms",
            "reclaim ran",
            "read the files ms",
            "open / read",
            "reopen after clean close ms",
        ],
    );
    for r in rows {
        t.row(vec![
            r.label.clone(),
            r.frames.to_string(),
            f(r.live as f64 / MB, 1),
            f(r.disk as f64 / MB, 1),
            f(r.open.as_secs_f64() * 1e3, 0),
            r.reclaimed.map_or("no".into(), |(a, b)| {
                format!("yes: {} -> {} MB", f(a as f64 / MB, 0), f(b as f64 / MB, 0))
            }),
            f(r.read.as_secs_f64() * 1e3, 0),
            format!("{}x", f(r.open.as_secs_f64() / r.read.as_secs_f64(), 1)),
            f(r.reopen.as_secs_f64() * 1e3, 0),
        ]);
    }
    t.note("open = SledStore::open in this process, what the agent runs first at start (its `spool opened ... ms=` log field); before each open and each read the spool's files are written back and dropped from the page cache (fdatasync + POSIX_FADV_DONTNEED), as after a reboot");
    t.note("read the files = reading every file of the database once, sequentially, cold: the I/O floor of any recovery that looks at all the data");
    t.note("the reclaim (copy live records to a fresh database) runs when the files exceed 3x the live bytes + 16 MiB");
    t.emit(results)
}
