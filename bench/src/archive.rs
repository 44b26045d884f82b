//! `archive`: the collector archiving many cameras (issue 9's scale targets).
//!
//! A load generator replays real H.264 frames (the agent's encoder on the
//! 720p clip, 2 Mbit/s, made beforehand) as N cameras into a fresh topic
//! with several partitions, as a backlog; then one collector (the release
//! binary, index and retention on) drains it into a local directory and
//! into HDFS. Reported: drain time and MB/s, collector CPU (user + sys) and
//! cameras per core at real time (camera-seconds archived per CPU-second),
//! peak RSS and per camera, the broker's CPU separately, and whether every
//! camera's frames are in the index exactly (nothing lost, nothing doubled).
//! The peer for HDFS throughput is the Java FsShell `-put` of the same
//! bytes (the archive the collector wrote, copied back out first).

use crate::kafka::Kafka;
use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_shared::wire::{self, Codec, FrameMeta, Rational};
use camfleet_shared::CameraId;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Args {
    pub clip: PathBuf,
    pub cameras: Vec<u32>,
    /// Seconds of video per camera.
    pub seconds: u64,
    pub partitions: i32,
    pub collector: PathBuf,
    pub hdfs: bool,
}

/// CPU seconds (user + sys) a process used, from /proc/<pid>/stat.
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn proc_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The broker's pid (the single node of the clone's services).
fn broker_pid() -> Option<u32> {
    let dir = std::env::var("CAMFLEET_SERVICES_DIR").ok()?;
    std::fs::read_to_string(Path::new(&dir).join("run/kafka-1.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn fresh_topic(kafka: &Kafka, partitions: i32) -> anyhow::Result<String> {
    let topic = format!(
        "bench.archive.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()?;
    let new = NewTopic::new(
        &topic,
        partitions,
        TopicReplication::Fixed(kafka.nodes.clamp(1, 3) as i32),
    );
    for r in admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(topic)
}

/// Produces `seconds` of the clip for each of `n` cameras, interleaved in
/// time order as live cameras would, capture times spaced at the frame rate.
async fn load(
    kafka: &Kafka,
    topic: &str,
    frames: &[(bool, Vec<u8>)],
    fps: Rational,
    (w, h): (u32, u32),
    n: u32,
    seconds: u64,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", (8 << 20).to_string())
        .create()?;
    let total = seconds * fps.num as u64 / fps.den as u64;
    let start_us = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64)
        .saturating_sub(total * 1_000_000 * fps.den as u64 / fps.num as u64);
    let cameras: Vec<CameraId> = (0..n)
        .map(|c| CameraId::new(&format!("bench/cam{c:04}")))
        .collect::<Result<_, _>>()?;
    let keys: Vec<String> = cameras.iter().map(|c| c.to_string()).collect();
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut sent = 0u64;
    use futures::StreamExt;
    for i in 0..total {
        let (keyframe, au) = &frames[i as usize % frames.len()];
        // The clip is two whole GOPs, so every loop starts at an IDR.
        for c in 0..n as usize {
            let meta = FrameMeta {
                camera: cameras[c].clone(),
                seq: i,
                capture_us: start_us + i * 1_000_000 * fps.den as u64 / fps.num as u64,
                pts_90k: fps.pts_90k(i),
                keyframe: *keyframe,
                width: w,
                height: h,
                fps,
                codec: Codec::H264,
                epoch: 1,
            };
            let mut headers = OwnedHeaders::new();
            for (k, v) in wire::headers(&meta, None) {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(topic)
                .key(&keys[c])
                .payload(au)
                .headers(headers);
            inflight.push(producer.send(record, Duration::from_secs(60)));
            sent += 1;
            while inflight.len() >= 2048 {
                if let Some(r) = inflight.next().await {
                    r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
                }
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(sent)
}

struct Drain {
    /// First record consumed until every record was consumed (from the
    /// collector's `camfleet_collector_records_consumed_total`).
    consume_s: f64,
    /// Pauses of >= 300 ms in consumption before the last record, and the longest.
    stalls: u32,
    longest_stall_s: f64,
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mb: f64,
    broker_cpu_s: f64,
    frames: BTreeMap<String, u64>,
    bytes: u64,
}

/// Runs the collector on the backlog until the index holds every frame.
fn drain(
    collector: &Path,
    work: &Path,
    kafka: &Kafka,
    topic: &str,
    root: &str,
    expected_frames: u64,
) -> anyhow::Result<Drain> {
    let config = work.join(format!("collector-{}.toml", topic.replace('.', "-")));
    let http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{topic}.bench"
[archive]
root = "{root}"
segment_target_ms = 4000
idle_flush_ms = 2000
[archive.retention]
max_age_s = 2592000
interval_s = 60
[http]
listen = "{http}"
"#,
            bootstrap = kafka.bootstrap
        ),
    )?;
    let broker = broker_pid();
    let broker_cpu0 = broker.and_then(proc_cpu_s).unwrap_or(0.0);
    let log = std::fs::File::create(work.join("collector-bench.log"))?;
    let t0 = Instant::now();
    let mut child = Command::new(collector)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn collector")?;
    let pid = child.id();
    let mut peak = 0f64;
    let mut cpu = 0f64;
    // Done when the segments archived so far hold every frame: counted
    // from the collector's log-free signal, the index, every 2 s.
    let deadline = t0 + Duration::from_secs(1800);
    let mut last_check = Instant::now();
    // Consumption progress: (time of the first record, of the last change,
    // count then); pauses while records were still to come.
    let (mut first, mut last_change, mut consumed) = (None::<Instant>, Instant::now(), 0u64);
    let (mut stalls, mut longest, mut consume_s) = (0u32, 0f64, None::<f64>);
    let wall = loop {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(proc_rss_mb(pid).unwrap_or(0.0));
        cpu = proc_cpu_s(pid).unwrap_or(cpu);
        if consume_s.is_none() {
            let now = Instant::now();
            let n = records_consumed(&http).unwrap_or(consumed);
            if n > consumed {
                let t0 = *first.get_or_insert(now);
                let pause = now.duration_since(last_change).as_secs_f64();
                if consumed > 0 && pause >= 0.3 + 0.2 {
                    // No change across more than one sample: >= 300 ms.
                    stalls += 1;
                    longest = longest.max(pause - 0.2);
                }
                (consumed, last_change) = (n, now);
                if n >= expected_frames {
                    consume_s = Some(now.duration_since(t0).as_secs_f64());
                }
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("collector exited early with {status}");
        }
        if last_check.elapsed() >= Duration::from_secs(2) {
            last_check = Instant::now();
            let (frames, _) = index_frames(collector, &config)?;
            if frames.values().sum::<u64>() >= expected_frames {
                break t0.elapsed().as_secs_f64();
            }
        }
        if Instant::now() > deadline {
            bail!("the collector did not drain the backlog in 30 min");
        }
    };
    let broker_cpu = broker.and_then(proc_cpu_s).unwrap_or(0.0) - broker_cpu0;
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    child.wait()?;
    let (frames, bytes) = index_frames(collector, &config)?;
    Ok(Drain {
        consume_s: consume_s.unwrap_or(f64::NAN),
        stalls,
        longest_stall_s: longest,
        wall_s: wall,
        cpu_s: cpu,
        peak_rss_mb: peak,
        broker_cpu_s: broker_cpu,
        frames,
        bytes,
    })
}

/// The collector's `camfleet_collector_records_consumed_total` from its
/// /metrics (plain HTTP/1.0 on loopback); `None` until it answers.
fn records_consumed(addr: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("camfleet_collector_records_consumed_total "))?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

/// Frames per camera and total bytes, from `archive ls --json` (the index).
fn index_frames(collector: &Path, config: &Path) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    let out = Command::new(collector)
        .args(["archive", "ls", "--json", "--config"])
        .arg(config)
        .output()?;
    if !out.status.success() {
        bail!("archive ls: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut frames = BTreeMap::new();
    let mut bytes = 0;
    for r in v["segments"].as_array().into_iter().flatten() {
        *frames
            .entry(r["camera"].as_str().unwrap_or_default().to_string())
            .or_default() += r["frames"].as_u64().unwrap_or(0);
        bytes += r["bytes"].as_u64().unwrap_or(0);
    }
    Ok((frames, bytes))
}

fn hdfs_shell(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let lib = std::env::var("CAMFLEET_HADOOP_LIB")?;
    let conf = std::env::var("CAMFLEET_HADOOP_CONF")?;
    let url = std::env::var("HDFS_URL")?;
    Ok(Command::new("java")
        .arg("-cp")
        .arg(format!("{conf}:{lib}/*"))
        .arg("org.apache.hadoop.fs.FsShell")
        .arg("-fs")
        .arg(url)
        .args(args)
        .output()?)
}

pub async fn run(
    kafka: &Kafka,
    args: Args,
    work: &Path,
    results: Option<&Path>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(work)?;
    let clip = args.clip.clone();
    // 2 s of GOPs (IDR every 60), looped: every loop starts at an IDR.
    let clip = tokio::task::spawn_blocking(move || crate::producer::encode_clip(&clip, 120, 2000))
        .await??;
    let fps = clip.fps;
    let clip_bytes: u64 = clip.frames.iter().map(|(_, p)| p.len() as u64).sum();
    let mut table = Table::new(
        format!(
            "archive: one collector drains a backlog of N cameras ({}x{} {} fps, {:.1} Mbit/s, {} s each) from a {}-partition topic; index + retention on",
            clip.width,
            clip.height,
            fps,
            clip_bytes as f64 * 8.0 / 1e6 / (clip.frames.len() as f64 / fps.as_f64()),
            args.seconds,
            args.partitions
        ),
        &[
            "target", "cameras", "MB", "drain s", "MB/s", "consume s", "consume MB/s", "stalls",
            "CPU s", "cameras/core", "peak RSS MB", "RSS/camera MB", "broker CPU s",
            "frames exact",
        ],
    );
    let mut hdfs_written: Option<(f64, u64, String)> = None;
    for &n in &args.cameras {
        let mut targets = vec![(
            "local",
            work.join(format!("archive-{n}")).display().to_string(),
        )];
        if args.hdfs {
            let url = std::env::var("HDFS_URL").context("HDFS_URL")?;
            targets.push((
                "hdfs",
                format!("{url}/camfleet-bench/{}-{n}", std::process::id()),
            ));
        }
        for (name, root) in targets {
            let topic = fresh_topic(kafka, args.partitions).await?;
            let sent = load(
                kafka,
                &topic,
                &clip.frames,
                fps,
                (clip.width, clip.height),
                n,
                args.seconds,
            )
            .await?;
            let per_camera = sent / n as u64;
            let d = drain(&args.collector, work, kafka, &topic, &root, sent)?;
            let exact = d.frames.len() == n as usize && d.frames.values().all(|v| *v == per_camera);
            let video_s = args.seconds as f64 * n as f64;
            table.row(vec![
                name.into(),
                n.to_string(),
                f(d.bytes as f64 / 1e6, 0),
                f(d.wall_s, 1),
                f(d.bytes as f64 / 1e6 / d.wall_s, 0),
                f(d.consume_s, 1),
                f(d.bytes as f64 / 1e6 / d.consume_s, 0),
                format!("{} (max {:.1} s)", d.stalls, d.longest_stall_s),
                f(d.cpu_s, 1),
                f(video_s / d.cpu_s.max(1e-9), 0),
                f(d.peak_rss_mb, 0),
                f(d.peak_rss_mb / n as f64, 2),
                f(d.broker_cpu_s, 1),
                if exact {
                    "yes".into()
                } else {
                    format!("NO: {:?}", d.frames.values().collect::<Vec<_>>())
                },
            ]);
            if name == "hdfs" {
                hdfs_written = Some((d.wall_s, d.bytes, root.clone()));
            }
            if name == "local" {
                let _ = std::fs::remove_dir_all(&root);
            }
            let _ = kafka.delete_topic(&topic).await;
        }
    }
    table.note("cameras/core: camera-seconds of video archived per CPU-second of the collector (user + sys), i.e. real-time cameras one core keeps up with");
    table.note("consume s: first record read until the last (the collector's records-consumed counter, sampled every 200 ms); consume MB/s = archived MB over that; stalls: pauses of >= 300 ms in reading before the last record");
    table.note("drain s: collector start until the index lists every frame (includes joining the group and the final snapshot of each open segment after idle_flush_ms = 2 s)");
    table.emit(results)?;

    if let Some((wall, bytes, root)) = hdfs_written {
        // The peer: the Java FsShell -put of the same bytes (the archive the
        // collector wrote, copied back out first).
        let base = root
            .split_once("://")
            .map(|(_, r)| &r[r.find('/').unwrap_or(0)..])
            .unwrap_or("/");
        let local = work.join("from-hdfs");
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local)?;
        let out = hdfs_shell(&[
            "-copyToLocal",
            &format!("{base}/bench"),
            &local.to_string_lossy(),
        ])?;
        if !out.status.success() {
            bail!(
                "FsShell -copyToLocal: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dst = format!("/camfleet-bench/put-{}", std::process::id());
        let t = Instant::now();
        let out = hdfs_shell(&["-put", &local.join("bench").to_string_lossy(), &dst])?;
        let put_s = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("FsShell -put: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut t2 = Table::new(
            "archive -> HDFS write throughput against the Java FsShell -put of the same files",
            &["writer", "MB", "seconds", "MB/s", "ratio"],
        );
        let ours = bytes as f64 / 1e6 / wall;
        let theirs = bytes as f64 / 1e6 / put_s;
        t2.row(vec![
            "collector (consume + mux + index + write)".into(),
            f(bytes as f64 / 1e6, 0),
            f(wall, 1),
            f(ours, 1),
            f(ours / theirs, 2),
        ]);
        t2.row(vec![
            "FsShell -put (JVM start included)".into(),
            f(bytes as f64 / 1e6, 0),
            f(put_s, 1),
            f(theirs, 1),
            "1.00".into(),
        ]);
        t2.note("the collector's time includes consuming from Kafka and muxing; FsShell only copies finished files");
        t2.emit(results)?;
        let _ = hdfs_shell(&["-rm", "-r", "-f", "-skipTrash", &dst, base]);
        let _ = std::fs::remove_dir_all(&local);
    }
    Ok(())
}
