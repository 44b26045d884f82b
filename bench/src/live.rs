//! `live`: the live view end to end through the release binaries. One
//! paced 720p30 test-pattern camera (1 s GOPs) -> agent -> Kafka ->
//! collector `[live]` (200 ms parts).
//!
//! * Glass-to-glass latency: headless chromium plays the collector's page
//!   (tests/browser/live_page.cjs, real time); every 100 ms the page's
//!   picture is read through a canvas, the test pattern's frame-number
//!   barcode decoded, and latency = now - that frame's capture time (from
//!   the frame's record on Kafka; the agent's clock is this machine's).
//!   Modes: LL-HLS (hls.js lowLatencyMode), plain HLS (hls.js, no LL,
//!   2 segments behind the edge), hls.js defaults (the peer), and
//!   Chromium's native HLS.
//! * Collector CPU per viewer: N concurrent LL-HLS clients of the camera
//!   (blocking playlist reload + every part, as hls.js does), N = 0 (the
//!   baseline: consuming, archiving, segmenting), 1, 10, 50; CPU from
//!   /proc/<pid>/stat over the same wall time.

use crate::agent::toml_path;
use crate::kafka::Kafka;
use crate::measure::percentile;
use crate::table::{f, Table};
use anyhow::{bail, Context};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub struct Args {
    /// Seconds of latency samples per playback mode.
    pub seconds: u64,
    /// Seconds per viewer-count step.
    pub viewer_seconds: u64,
    pub viewers: Vec<usize>,
    pub agent: PathBuf,
    pub collector: PathBuf,
    /// tests/browser/live_page.cjs
    pub driver: PathBuf,
    /// $CAMFLEET_WEB (hls.js, puppeteer-core).
    pub web: PathBuf,
    pub work: PathBuf,
}

const CAMERA: &str = "bench/live";
const FPS: u32 = 30;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let topic = kafka.fresh_topic("live-video").await?;
    let outcome = run_with(&kafka.bootstrap, &topic, &args).await;
    kafka.delete_topic(&topic).await?;
    let (latency, load) = outcome?;

    let mut table = Table::new(
        format!(
            "glass-to-glass latency in headless chromium, one 1280x720 {FPS} fps camera, 1 s GOPs, 200 ms parts, {} s per mode",
            args.seconds
        ),
        &["player", "path", "samples", "p50 ms", "p95 ms", "max ms"],
    );
    for (mode, path, mut l) in latency {
        l.sort_unstable();
        let pct = |q| {
            if l.is_empty() {
                "-".to_string()
            } else {
                percentile(&l, q).to_string()
            }
        };
        table.row(vec![
            mode.to_string(),
            path,
            l.len().to_string(),
            pct(0.5),
            pct(0.95),
            l.last().map_or("-".into(), |m| m.to_string()),
        ]);
    }
    table.note("latency = wall clock when the page's picture was read (canvas, every 100 ms) - capture time of the frame whose barcode it shows; same machine, same clock");
    table.note("targets (issue 10): low-latency path p50 <= 1.0 s, plain HLS p50 <= 3 s; hls.js defaults is the peer on the same stream");
    table.emit(results)?;

    let base = load
        .iter()
        .find(|r| r.viewers == 0)
        .map(|r| r.cpu_share)
        .unwrap_or(0.0);
    let mut table = Table::new(
        format!(
            "collector CPU per live viewer (LL-HLS clients: blocking reload + every part), one 720p30 camera, {} s per step",
            args.viewer_seconds
        ),
        &[
            "viewers",
            "requests/s",
            "MB/s served",
            "hinted parts not made (GOP ended first)",
            "collector CPU, % of a core",
            "per viewer above 0 viewers",
        ],
    );
    for r in &load {
        table.row(vec![
            r.viewers.to_string(),
            f(r.requests as f64 / r.wall.as_secs_f64(), 0),
            f(r.bytes as f64 / r.wall.as_secs_f64() / 1e6, 2),
            r.errors.to_string(),
            format!("{}%", f(r.cpu_share * 100.0, 1)),
            if r.viewers == 0 {
                "-".into()
            } else {
                format!("{}%", f((r.cpu_share - base) * 100.0 / r.viewers as f64, 2))
            },
        ]);
    }
    table.note("0 viewers = the baseline: consuming, archiving and cutting live parts with nobody watching");
    table.note("the load generator runs in this process on the same 2 cores; a cache (nginx/CDN) in front turns N viewers into ~1 for the collector (docs/live.md)");
    table.emit(results)
}

type Latencies = Vec<(&'static str, String, Vec<u64>)>;

async fn run_with(
    bootstrap: &str,
    topic: &str,
    args: &Args,
) -> anyhow::Result<(Latencies, Vec<LoadRow>)> {
    let dir = args.work.join("live");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            r#"data_dir = {data}
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
[http]
listen = ""
[[camera]]
id = "{CAMERA}"
source = {{ kind = "test_pattern", width = 1280, height = 720, fps = {FPS} }}
encoder = {{ bitrate_kbps = 2000, keyframe_interval_frames = {FPS} }}
"#,
            data = toml_path(&dir.join("agent-data")),
        ),
    )?;
    std::fs::write(
        dir.join("collector.toml"),
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{topic}.collector"
dead_letter_topic = ""
[archive]
root = {archive}
segment_target_ms = 2000
[http]
listen = "{addr}"
web_vendor_dir = {vendor}
[live]
part_target_ms = 200
detections_topic = ""
"#,
            archive = toml_path(&dir.join("archive")),
            vendor = toml_path(&args.web.join("node_modules/hls.js/dist")),
        ),
    )?;
    let spawn = |bin: &Path, config: &str, log: &str| -> anyhow::Result<Child> {
        Command::new(bin)
            .args(["run", "--config"])
            .arg(dir.join(config))
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(std::fs::File::create(dir.join(format!("{log}.json")))?)
            .stderr(std::fs::File::create(dir.join(log))?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))
    };
    let collector = spawn(&args.collector, "collector.toml", "collector.log")?;
    let collector_pid = collector.id();
    let mut procs = Procs(vec![collector]);
    procs.0.push(spawn(&args.agent, "agent.toml", "agent.log")?);
    let playlist = format!("/live/{CAMERA}/index.m3u8");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get_once(&addr, &playlist).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("no live playlist after 30 s; logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let modes: [(&'static str, &str); 5] = [
        ("LL-HLS (hls.js lowLatencyMode)", ""),
        (
            "LL-HLS, hls.js stall/catch-up defaults (before)",
            "&catchup=0",
        ),
        ("plain HLS (hls.js, 2 segments back)", "&ll=0"),
        ("hls.js defaults (peer)", "&hlsdefaults=1"),
        ("native HLS (Chromium)", "&player=native"),
    ];
    let mut samples = Vec::new();
    for (name, query) in modes {
        let url = format!("http://{addr}/?camera={CAMERA}{query}");
        let shot = dir.join(format!("{}.png", name.split(' ').next().unwrap_or("mode")));
        let out = tokio::task::block_in_place(|| {
            Command::new("timeout")
                .arg((args.seconds + 90).to_string())
                .arg("node")
                .arg(&args.driver)
                .args([url.as_str(), CAMERA])
                .arg(&shot)
                .arg(args.seconds.to_string())
                .env("CAMFLEET_WEB", &args.web)
                .output()
        })
        .context("run node with the page driver")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))
            .with_context(|| format!("driver output {text:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("page driver ({name}): {e}");
        }
        // Stalls hls.js reported (each raised its target latency) and the
        // page's jumps back to the live-sync position.
        let path = match v["after"]["stalls"].as_u64() {
            Some(n) if v["after"]["path"] == "hls.js" => format!(
                "hls.js, {n} stalls, {} jumps",
                v["after"]["jumps"].as_u64().unwrap_or(0)
            ),
            _ => v["after"]["path"].as_str().unwrap_or("?").to_string(),
        };
        let points: Vec<(u64, u64)> = v["samples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| Some((s["now_ms"].as_u64()?, s["frameNumber"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        samples.push((name, path, points));
    }

    let mut load = Vec::new();
    for &n in &args.viewers {
        load.push(
            viewers(
                &addr,
                collector_pid,
                n,
                Duration::from_secs(args.viewer_seconds),
            )
            .await?,
        );
    }
    drop(procs);

    // Frame number -> capture time. Only encoded frames get sequence
    // numbers (the capture thread drops frames when the encoder is busy),
    // so the archive is decoded (ffmpeg) and each picture's barcode read:
    // the k-th archived picture is the k-th record in sequence order.
    let by_seq = tokio::task::block_in_place(|| capture_times(bootstrap, topic))?;
    let numbers = tokio::task::block_in_place(|| archived_frame_numbers(&dir.join("archive")))?;
    let mut seqs: Vec<(u64, u64)> = by_seq.into_iter().collect();
    seqs.sort_unstable();
    // Both start at the camera's first frame; the agent and the collector
    // are stopped together, so the archive may lack the last records'
    // pictures. Pictures and records are matched from the start; a picture
    // missing in between would show as frame numbers that do not increase.
    if numbers.len() > seqs.len()
        || seqs.len() - numbers.len() > FPS as usize * 2
        || !numbers
            .windows(2)
            .all(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if b > a))
    {
        bail!(
            "{} pictures in the archive, {} records on Kafka: frame numbers cannot be matched",
            numbers.len(),
            seqs.len()
        );
    }
    let captures: HashMap<u64, u64> = numbers
        .iter()
        .zip(&seqs)
        .filter_map(|(n, (_, cap))| Some(((*n)?, *cap)))
        .collect();
    let latency = samples
        .into_iter()
        .map(|(name, path, points)| {
            let l = points
                .iter()
                .filter_map(|(now, frame)| {
                    let cap = captures.get(frame)?;
                    Some(now.saturating_sub(cap / 1000))
                })
                .collect();
            (name, path, l)
        })
        .collect();
    Ok((latency, load))
}

/// The test-pattern frame number of every picture in an archive
/// directory, in archive (= sequence) order, decoded by ffmpeg.
fn archived_frame_numbers(root: &Path) -> anyhow::Result<Vec<Option<u64>>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ts")
                && !e.file_name().to_string_lossy().starts_with('.')
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let list = root.join("concat.txt");
    std::fs::write(
        &list,
        files
            .iter()
            .map(|f| format!("file '{}'\n", f.display()))
            .collect::<String>(),
    )?;
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "concat", "-safe", "0", "-i"])
        .arg(&list)
        // passthrough: one picture out per picture in (no duplicates filling
        // the media-time gaps the agent's dropped frames left).
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .context("ffmpeg decodes the archive")?;
    if !out.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (w, h) = (1280usize, 720usize);
    Ok(out
        .stdout
        .chunks_exact(w * h)
        .map(|y| camfleet_agent::source::test_pattern::read_frame_number(y, w as u32, w))
        .collect())
}

/// Sequence number -> capture time (µs) of every record of `topic`.
fn capture_times(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<u64, u64>> {
    let mut out = HashMap::new();
    let group = format!("{topic}.bench-captures");
    crate::kafka::read_to_end(bootstrap, topic, &group, Duration::from_secs(60), |m| {
        let headers: Vec<(&str, Option<&[u8]>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        if let Ok((meta, _)) = camfleet_shared::wire::parse(m.key(), headers) {
            out.insert(meta.seq, meta.capture_us);
        }
        Ok(())
    })?;
    Ok(out)
}

struct LoadRow {
    viewers: usize,
    requests: u64,
    bytes: u64,
    errors: u64,
    wall: Duration,
    cpu_share: f64,
}

/// User + system CPU of `pid` so far.
fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11, 12 here.
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
}

async fn viewers(addr: &str, pid: u32, n: usize, wall: Duration) -> anyhow::Result<LoadRow> {
    let deadline = Instant::now() + wall;
    let cpu0 = cpu_of(pid)?;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(viewer(addr.to_string(), deadline)))
        .collect();
    if n == 0 {
        tokio::time::sleep(wall).await;
    }
    let (mut requests, mut bytes, mut errors) = (0, 0, 0);
    for t in tasks {
        let (r, b, e) = t.await?;
        requests += r;
        bytes += b;
        errors += e;
    }
    let wall = t0.elapsed();
    let cpu = cpu_of(pid)? - cpu0;
    Ok(LoadRow {
        viewers: n,
        requests,
        bytes,
        errors,
        wall,
        cpu_share: cpu.as_secs_f64() / wall.as_secs_f64(),
    })
}

/// One LL-HLS client: read the playlist at the last part it has, fetch the
/// preload-hinted part (the server holds it until it exists), repeat.
async fn viewer(addr: String, deadline: Instant) -> (u64, u64, u64) {
    let (mut requests, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let Ok(mut conn) = Conn::open(&addr).await else {
        return (0, 0, 1);
    };
    let base = format!("/live/{CAMERA}");
    let mut query = String::new();
    while Instant::now() < deadline {
        requests += 1;
        let Ok((200, body)) = conn.get(&format!("{base}/index.m3u8{query}")).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        bytes += body.len() as u64;
        let text = String::from_utf8_lossy(&body);
        let Some((msn, hint)) = next_part(&text) else {
            errors += 1;
            continue;
        };
        requests += 1;
        match conn.get(&format!("{base}/{}", hint.uri)).await {
            Ok((200, part)) => {
                bytes += part.len() as u64;
                query = format!("?_HLS_msn={msn}&_HLS_part={}", hint.index);
            }
            // The segment ended before this part (a keyframe came): read on.
            _ => {
                errors += 1;
                query.clear();
            }
        }
    }
    (requests, bytes, errors)
}

struct Hint {
    uri: String,
    index: usize,
}

/// The open segment's msn and the preload hint of a playlist.
fn next_part(playlist: &str) -> Option<(u64, Hint)> {
    let first: u64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))?
        .parse()
        .ok()?;
    let closed = playlist.lines().filter(|l| l.starts_with("seg/")).count() as u64;
    let uri = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))?
        .trim_end_matches('"')
        .to_string();
    let index = uri
        .trim_end_matches(".ts")
        .rsplit_once('.')?
        .1
        .parse()
        .ok()?;
    Some((first + closed, Hint { uri, index }))
}

/// A minimal keep-alive HTTP/1.1 client (Content-Length bodies only, which
/// is all the collector sends for these routes).
struct Conn {
    io: BufReader<tokio::net::TcpStream>,
    addr: String,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            io: BufReader::new(s),
            addr: addr.to_string(),
        })
    }

    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.io.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        self.io.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

async fn get_once(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    Conn::open(addr).await?.get(path).await
}
