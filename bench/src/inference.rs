//! `inference`: the collector with inference on, end to end through the
//! binaries against the local broker. One camera (a real clip, looped, in
//! real time at its own rate) streams through the agent; the collector archives
//! it and infers at `infer_fps`. Measured: capture -> detection record
//! latency (the record's Kafka timestamp minus the frame's capture time),
//! the collector's CPU per camera against an archive-only run of the same
//! video, and from that how many such cameras one core can serve.

use crate::agent::toml_path;
use crate::kafka::Kafka;
use crate::measure::{percentile, wait_with_cpu};
use crate::table::{f, Table};
use anyhow::{bail, Context};
use rdkafka::message::Message;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Args {
    pub clip: PathBuf,
    pub seconds: u64,
    pub rates: Vec<f64>,
    pub manifest: PathBuf,
    pub models: PathBuf,
    /// Backbone manifest of the learning embedding (one extra run).
    pub embedding: PathBuf,
    pub agent: PathBuf,
    pub collector: PathBuf,
    pub work: PathBuf,
}

struct Outcome {
    /// Collector CPU over the run.
    cpu: Duration,
    wall: Duration,
    /// Capture -> detection record, ms, sorted.
    latency_ms: Vec<u64>,
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    // None = archive only, the baseline the inference cost is measured from.
    // (rate, learning embedding on)
    let mut rates: Vec<(Option<f64>, bool)> = vec![(None, false)];
    rates.extend(args.rates.iter().map(|r| (Some(*r), false)));
    if let Some(top) = args.rates.iter().copied().reduce(f64::max) {
        rates.push((Some(top), true));
    }
    for (rate, embedding) in rates {
        let video = kafka.fresh_topic("infer-video").await?;
        let detections = kafka.fresh_topic("infer-detections").await?;
        let events = kafka.fresh_topic("infer-events").await?;
        let features = kafka.fresh_topic("infer-features").await?;
        let labels = kafka.fresh_topic("infer-labels").await?;
        let outcome = {
            let topics = Topics {
                video: video.clone(),
                detections: detections.clone(),
                events: events.clone(),
                features: embedding.then(|| (features.clone(), labels.clone())),
            };
            let (a, k) = (&args, kafka.bootstrap.clone());
            tokio::task::block_in_place(|| one_run(a, &k, &topics, rate))?
        };
        for t in [&video, &detections, &events, &features, &labels] {
            kafka.delete_topic(t).await?;
        }
        rows.push(((rate, embedding), outcome));
    }

    let base = rows
        .iter()
        .find(|((r, _), _)| r.is_none())
        .map(|(_, o)| o.cpu.as_secs_f64() / o.wall.as_secs_f64());
    let mut table = Table::new(
        format!(
            "collector with inference, one camera streaming {} in real time, {} s, loopback Kafka",
            args.clip
                .file_name()
                .map_or("clip".into(), |n| n.to_string_lossy()),
            args.seconds
        ),
        &[
            "infer_fps",
            "records",
            "capture -> detection p50 ms",
            "p99 ms",
            "max ms",
            "collector CPU, % of a core",
            "inference's share",
            "cameras per core",
            "embedding CPU ms per picture",
        ],
    );
    // CPU per second of the same rate without the embedding: what the
    // embedding run adds, spread over its inferred pictures.
    let plain = |rate: Option<f64>| {
        rows.iter()
            .find(|((r, e), _)| *r == rate && !*e)
            .map(|(_, o)| o.cpu.as_secs_f64() / o.wall.as_secs_f64())
    };
    for ((rate, embedding), o) in &rows {
        let share = o.cpu.as_secs_f64() / o.wall.as_secs_f64();
        let l = &o.latency_ms;
        let extra_ms = match (embedding, plain(*rate)) {
            (true, Some(p)) if !o.latency_ms.is_empty() => f(
                (share - p) * o.wall.as_secs_f64() * 1000.0 / o.latency_ms.len() as f64,
                1,
            ),
            _ => "-".into(),
        };
        table.row(vec![
            match (rate, embedding) {
                (None, _) => "off (archive only)".into(),
                (Some(r), false) => f(*r, 0),
                (Some(r), true) => format!("{} + embedding", f(*r, 0)),
            },
            l.len().to_string(),
            if l.is_empty() {
                "-".into()
            } else {
                percentile(l, 0.5).to_string()
            },
            if l.is_empty() {
                "-".into()
            } else {
                percentile(l, 0.99).to_string()
            },
            l.last().map_or("-".into(), |m| m.to_string()),
            format!("{}%", f(share * 100.0, 1)),
            match (rate, base) {
                (Some(_), Some(b)) => format!("{}%", f((share - b) * 100.0, 1)),
                _ => "-".into(),
            },
            format!("{}", f(1.0 / share, 1)),
            extra_ms,
        ]);
    }
    table.note("target: capture -> detection record p99 <= 150 ms at infer_fps = 5");
    table.note("+ embedding = [inference.embedding] on (docs/learning.md): every object's crop and a whole frame every 10 s through the 1280-d backbone, feature records published, tables written; its extra CPU per inferred picture is against the same rate without it");
    table.note("latency = the detection record's Kafka timestamp (set when the collector produces it) minus the frame's capture time; both clocks are this machine's");
    table.note("inference's share = collector CPU minus the archive-only run's (decoding every frame of a GOP up to each sampled picture, preprocessing, ONNX Runtime, publishing)");
    table.emit(results)
}

struct Topics {
    video: String,
    detections: String,
    events: String,
    /// (features, labels) when the learning embedding is on.
    features: Option<(String, String)>,
}

fn one_run(
    args: &Args,
    bootstrap: &str,
    topics: &Topics,
    rate: Option<f64>,
) -> anyhow::Result<Outcome> {
    let (video, detections, events) = (&topics.video, &topics.detections, &topics.events);
    let name = rate.map_or("off".into(), |r| format!("{r}"))
        + if topics.features.is_some() {
            "-embedding"
        } else {
            ""
        };
    let dir = args.work.join(format!("inference-{name}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let fps = {
        use camfleet_agent::source::FrameSource;
        camfleet_agent::source::y4m::Y4mFile::open(&args.clip, false, false)?
            .format()
            .fps
    };
    let frames = (args.seconds as f64 * fps.as_f64()).round() as u64;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            r#"data_dir = {data}
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{video}"
[http]
listen = ""
[[camera]]
id = "bench/infer"
max_frames = {frames}
source = {{ kind = "y4m", path = {clip}, loop_file = true }}
encoder = {{ bitrate_kbps = 2000, keyframe_interval_frames = 30 }}
"#,
            data = toml_path(&dir.join("agent-data")),
            clip = toml_path(&args.clip),
        ),
    )?;
    let mut collector = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{video}"
group_id = "{video}.collector"
dead_letter_topic = ""
[archive]
root = {archive}
segment_target_ms = 2000
[http]
listen = ""
"#,
        archive = toml_path(&dir.join("archive")),
    );
    if let Some(rate) = rate {
        collector.push_str(&format!(
            "[inference]\nmodel = {}\nmodels_dir = {}\ninfer_fps = {rate}\ndetections_topic = \"{detections}\"\nevents_topic = \"{events}\"\n",
            toml_path(&args.manifest),
            toml_path(&args.models),
        ));
        if let Some((features, labels)) = &topics.features {
            collector.push_str(&format!(
                "[inference.embedding]\nmodel = {}\nmodels_dir = {}\nfeatures_topic = \"{features}\"\nlabels_topic = \"{labels}\"\n",
                toml_path(&args.embedding),
                toml_path(&args.models),
            ));
        }
    }
    std::fs::write(dir.join("collector.toml"), collector)?;
    let spawn = |bin: &Path, config: &str, log: &str| -> anyhow::Result<std::process::Child> {
        Command::new(bin)
            .args(["run", "--config"])
            .arg(dir.join(config))
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log))?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))
    };
    let collector = spawn(&args.collector, "collector.toml", "collector.log")?;
    let started = Instant::now();
    let agent = spawn(&args.agent, "agent.toml", "agent.log")?;
    let (status, _) = wait_with_cpu(agent)?;
    if !status.success() {
        bail!("agent failed; log {}", dir.join("agent.log").display());
    }
    // Let the collector finish the last frames, then stop it.
    std::thread::sleep(Duration::from_secs(3));
    let wall = started.elapsed();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let (status, cpu) = wait_with_cpu(collector)?;
    if !status.success() {
        bail!(
            "collector failed; log {}",
            dir.join("collector.log").display()
        );
    }
    let latency_ms = match rate {
        Some(_) => read_latencies(bootstrap, detections)?,
        None => Vec::new(),
    };
    Ok(Outcome {
        cpu,
        wall,
        latency_ms,
    })
}

fn read_latencies(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    let group = format!("{topic}.bench");
    crate::kafka::read_to_end(bootstrap, topic, &group, Duration::from_secs(20), |m| {
        let record: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let capture_ms = record["capture_us"].as_u64().unwrap_or(0) / 1000;
        if let Some(ts) = m.timestamp().to_millis() {
            out.push((ts as u64).saturating_sub(capture_ms));
        }
        Ok(())
    })?;
    out.sort_unstable();
    Ok(out)
}
