//! Runs the real `camfleet-agent` binary for one camera and collects what the
//! process itself reports (its JSON summary) and what the kernel saw (CPU
//! time from `wait4`, peak RSS from `/proc/<pid>/status`).

use crate::kafka::Kafka;
use crate::measure::wait_with_cpu;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct AgentSpec<'a> {
    /// Names the run's directory under the work dir.
    pub name: &'a str,
    pub topic: &'a str,
    /// The camera's `source = { ... }` inline table.
    pub source: String,
    pub bitrate_kbps: u32,
    /// Frames per camera.
    pub frames: u64,
    /// Identical cameras in the one agent (`bench/<name>-<i>` from 2 on).
    pub cameras: u32,
}

pub struct AgentRun {
    /// The first camera's line of the agent's exit summary (see agent/src/stats.rs).
    pub summary: serde_json::Value,
    /// Every camera's line.
    pub summaries: Vec<serde_json::Value>,
    pub cpu: Duration,
    pub wall: Duration,
    /// Peak resident set size, kB.
    pub vm_hwm_kb: u64,
    /// CPU time by thread name, most first (sampled: up to 100 ms of a
    /// thread's last moments may be missing).
    pub threads: Vec<(String, Duration)>,
}

impl AgentRun {
    pub fn u64(&self, key: &str) -> anyhow::Result<u64> {
        self.summary[key]
            .as_u64()
            .with_context(|| format!("agent summary has no {key}: {}", self.summary))
    }
}

pub fn test_pattern_source(width: u32, height: u32, fps: u32) -> String {
    format!(r#"{{ kind = "test_pattern", width = {width}, height = {height}, fps = {fps} }}"#)
}

/// A paced, looping Y4M source: frames come at the file's rate, like a camera.
pub fn y4m_source(path: &Path) -> String {
    format!(
        r#"{{ kind = "y4m", path = {}, loop_file = true }}"#,
        toml_path(path)
    )
}

/// A path as a TOML string: a JSON string is a valid TOML basic string.
pub fn toml_path(path: &Path) -> String {
    serde_json::Value::from(path.display().to_string()).to_string()
}

/// Runs the agent until it has captured `spec.frames` frames and exited.
pub fn run(agent: &Path, work: &Path, kafka: &Kafka, spec: &AgentSpec) -> anyhow::Result<AgentRun> {
    let dir = work.join(spec.name);
    // A fresh data dir: a fresh sequence state, as on a new box.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("agent.toml");
    let mut text = format!(
        r#"data_dir = {data}
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
"#,
        data = toml_path(&dir.join("data")),
        bootstrap = kafka.bootstrap,
        topic = spec.topic,
    );
    for i in 0..spec.cameras.max(1) {
        let id = match i {
            0 => format!("bench/{}", spec.name),
            _ => format!("bench/{}-{i}", spec.name),
        };
        text.push_str(&format!(
            r#"[[camera]]
id = "{id}"
max_frames = {frames}
source = {source}
encoder = {{ bitrate_kbps = {bitrate}, keyframe_interval_frames = 60 }}
"#,
            frames = spec.frames,
            source = spec.source,
            bitrate = spec.bitrate_kbps,
        ));
    }
    std::fs::write(&config, text)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let start = Instant::now();
    let mut child = Command::new(agent)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", agent.display()))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, proc_dir) = (done.clone(), PathBuf::from(format!("/proc/{}", child.id())));
        // VmHWM is the kernel's own peak and a thread's CPU time only grows:
        // sampling only has to catch each before it is gone.
        std::thread::spawn(move || {
            let mut peak = 0u64;
            let mut threads = HashMap::new();
            while !done.load(Relaxed) {
                if let Some(kb) = std::fs::read_to_string(proc_dir.join("status"))
                    .ok()
                    .as_deref()
                    .and_then(vm_hwm_kb)
                {
                    peak = peak.max(kb);
                }
                sample_threads(&proc_dir, &mut threads);
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, threads)
        })
    };
    let (status, cpu) = wait_with_cpu(child)?;
    let wall = start.elapsed();
    done.store(true, Relaxed);
    let (vm_hwm_kb, threads) = sampler.join().expect("sampler thread");
    let out = reader.join().expect("reader thread")?;
    if !status.success() {
        bail!(
            "agent exited with {status}; log: {}\n{}",
            log_path.display(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let summaries = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .context("agent summary is not JSON")?;
    let summary = summaries
        .first()
        .cloned()
        .with_context(|| format!("agent printed no summary; log: {}", log_path.display()))?;
    Ok(AgentRun {
        summary,
        summaries,
        cpu,
        wall,
        vm_hwm_kb,
        threads: by_name(threads),
    })
}

/// Records `tid -> (name, user + system clock ticks)` for every live thread.
fn sample_threads(proc_dir: &Path, threads: &mut HashMap<String, (String, u64)>) {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `tid (name) state ...`: the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            threads.insert(
                task.file_name().to_string_lossy().into_owned(),
                (stat[open + 1..close].to_string(), user + system),
            );
        }
    }
}

/// Sums threads of the same name (tokio workers, librdkafka brokers), most CPU first.
fn by_name(threads: HashMap<String, (String, u64)>) -> Vec<(String, Duration)> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut sums: HashMap<String, u64> = HashMap::new();
    for (name, ticks) in threads.into_values() {
        *sums.entry(name).or_default() += ticks;
    }
    let mut out: Vec<(String, Duration)> = sums
        .into_iter()
        .map(|(name, ticks)| (name, Duration::from_millis(ticks * 1000 / hz)))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

pub fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
