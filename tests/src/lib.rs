//! Helpers for camfleet's end-to-end tests: the real services' addresses,
//! fresh topics, the built binaries, configs in temp dirs, and independent
//! peers (ffprobe, ffmpeg, kcat, the Java HDFS shell).
//!
//! The services come from `scripts/services up`, which writes `.services/env`;
//! `scripts/test` sources it before `cargo test`. A test that finds no
//! services fails with that instruction: it never passes silently.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
pub mod edge_link;
pub mod learning_clip;

/// Addresses of the running services.
pub struct Services {
    pub kafka: String,
    pub kafka_nodes: usize,
    pub hdfs: String,
    pub hadoop_lib: String,
    pub hadoop_conf: String,
}

/// The SASL_SSL listener of `scripts/services` (docs/security.md).
pub struct SecureKafka {
    pub bootstrap: String,
    /// The CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// A CA that signed nothing the broker has.
    pub other_ca_file: PathBuf,
    /// The agent's SCRAM user and its password file.
    pub user: String,
    pub password_file: PathBuf,
    pub collector_user: String,
    pub collector_password_file: PathBuf,
}

impl SecureKafka {
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .unwrap()
            .trim_end()
            .to_string()
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the end-to-end tests need the real services. \
             Run scripts/test, or `scripts/services up && . .services/env` first."
        )
    })
}

impl Services {
    pub fn get() -> Self {
        Self {
            kafka: env("KAFKA_BOOTSTRAP"),
            kafka_nodes: env("KAFKA_NODES").parse().expect("KAFKA_NODES is a number"),
            hdfs: env("HDFS_URL"),
            hadoop_lib: env("CAMFLEET_HADOOP_LIB"),
            hadoop_conf: env("CAMFLEET_HADOOP_CONF"),
        }
    }

    /// The SASL_SSL listener and its test CA and SCRAM users.
    pub fn secure(&self) -> SecureKafka {
        SecureKafka {
            bootstrap: env("KAFKA_SECURE_BOOTSTRAP"),
            ca_file: env("KAFKA_CA_FILE").into(),
            other_ca_file: env("KAFKA_OTHER_CA_FILE").into(),
            user: env("KAFKA_SCRAM_USER"),
            password_file: env("KAFKA_SCRAM_PASSWORD_FILE").into(),
            collector_user: env("KAFKA_SCRAM_COLLECTOR_USER"),
            collector_password_file: env("KAFKA_SCRAM_COLLECTOR_PASSWORD_FILE").into(),
        }
    }

    /// Creates a topic unique to this test run, so tests do not share state.
    pub fn fresh_topic(&self, name: &str, partitions: i32) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let topic = format!("test.{name}.{}.{nanos}", std::process::id());
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .create()
            .expect("admin client");
        let rf = self.kafka_nodes.min(3) as i32;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = rt
            .block_on(admin.create_topics(
                &[NewTopic::new(
                    &topic,
                    partitions,
                    TopicReplication::Fixed(rf),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            ))
            .expect("create topic");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        topic
    }

    /// Runs the Java HDFS shell (an independent peer) with `args`.
    pub fn hdfs_shell(&self, args: &[&str]) -> String {
        let out = Command::new("java")
            .arg("-cp")
            .arg(format!("{}:{}/*", self.hadoop_conf, self.hadoop_lib))
            .arg("org.apache.hadoop.fs.FsShell")
            .arg("-fs")
            .arg(&self.hdfs)
            .args(args)
            .output()
            .expect("run java FsShell");
        assert!(
            out.status.success(),
            "FsShell {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Path of a workspace binary (built by `cargo build --workspace` before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// A child process killed when dropped; stderr goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, bin: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::spawn_env(name, bin, args, log_dir, &[])
    }

    /// [`Proc::spawn`] with extra environment variables (e.g. systemd's
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC`).
    pub fn spawn_env(
        name: &str,
        bin: &str,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log = log_dir.join(format!("{}.log", name.replace('/', "-")));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary(bin))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Self {
            child,
            log,
            name: name.into(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. libc SIGTERM = 15, SIGKILL = 9) via kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.name);
    }

    /// Waits (bounded) for exit; returns stdout. Panics with the log on failure.
    pub fn wait_success(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(
                    status.success(),
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
                return out;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a successful exit and parses the first stdout line, the
    /// JSON summary both binaries print.
    pub fn wait_summary(self, timeout: Duration) -> serde_json::Value {
        let out = self.wait_success(timeout);
        let line = out.lines().next().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
    }

    /// Waits (bounded) until `pred` holds for the log text.
    pub fn wait_log(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.log_text()) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One test-pattern camera of a test.
pub struct PatternCamera<'a> {
    pub id: &'a str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u64,
    /// Real-time pacing (a live camera) rather than as fast as possible.
    pub paced: bool,
}

/// Agent config for one test-pattern camera; `extra_kafka` lines go in
/// `[kafka]`, `extra` (whole tables such as `[spool]`) at the end. The
/// agent's `/metrics` listener is off unless `extra` has an `[http]` table.
pub fn agent_config(
    s: &Services,
    topic: &str,
    data_dir: &Path,
    cam: &PatternCamera<'_>,
    extra_kafka: &str,
    extra: &str,
) -> String {
    let PatternCamera {
        id: camera,
        width,
        height,
        fps,
        frames,
        paced,
    } = *cam;
    format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
{extra_kafka}
[[camera]]
id = "{camera}"
max_frames = {frames}
source = {{ kind = "test_pattern", width = {width}, height = {height}, fps = {fps}, unpaced = {unpaced} }}
encoder = {{ bitrate_kbps = 1500, keyframe_interval_frames = 15 }}
{http}
{extra}
"#,
        data = data_dir.display(),
        kafka = s.kafka,
        unpaced = !paced,
        http = if extra.contains("[http]") {
            ""
        } else {
            "[http]\nlisten = \"\""
        },
    )
}

/// Collector config writing to `root`.
pub fn collector_config(
    s: &Services,
    topic: &str,
    group: &str,
    root: &str,
    segment_ms: u64,
) -> String {
    format!(
        r#"[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
group_id = "{group}"
dead_letter_topic = "{topic}.dlq"
# The broker's minimum: a killed collector's partitions move on quickly.
librdkafka_options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "2000" }}
[archive]
root = "{root}"
segment_target_ms = {segment_ms}
idle_flush_ms = 1500
[http]
listen = ""
"#,
        kafka = s.kafka,
    )
}

/// All `.ts` files under `dir`, sorted by path (= camera, hour, first seq).
pub fn segments_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ts")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Frames ffprobe (an independent peer) counts in a file.
pub fn ffprobe_frames(path: &Path) -> (String, u32, u32, u64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed by scripts/setup");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // MPEG-TS streams are listed twice (per program and globally); take one.
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let f: Vec<&str> = line.trim().split(',').collect();
    assert_eq!(f.len(), 4, "ffprobe output {text:?}");
    (
        f[0].to_string(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

/// Decodes a file with ffmpeg (a peer) and reads the test-pattern frame number of
/// every picture.
pub fn frame_numbers(path: &Path, width: u32, height: u32) -> Vec<u64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .expect("ffmpeg is installed by scripts/setup");
    assert!(
        out.status.success(),
        "ffmpeg {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = (width * height) as usize;
    assert_eq!(
        out.stdout.len() % size,
        0,
        "partial picture from {}",
        path.display()
    );
    out.stdout
        .chunks(size)
        .map(|y| {
            camfleet_agent::source::test_pattern::read_frame_number(y, width, width as usize)
                .unwrap_or_else(|| panic!("no frame number in a picture of {}", path.display()))
        })
        .collect()
}

/// PSNR of two 8-bit planes in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// One test's world: the services, a fresh topic, and a temp dir for configs,
/// agent state, archives and logs.
pub struct Scenario {
    pub services: Services,
    pub topic: String,
    pub dir: tempfile::TempDir,
}

impl Scenario {
    pub fn new(name: &str, partitions: i32) -> Self {
        let services = Services::get();
        let topic = services.fresh_topic(name, partitions);
        Self {
            services,
            topic,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `config` to `<name>.toml` and runs `<bin> run --config` on it.
    pub fn spawn(&self, name: &str, bin: &str, config: &str) -> Proc {
        let file = self
            .dir
            .path()
            .join(format!("{}.toml", name.replace('/', "-")));
        std::fs::write(&file, config).unwrap();
        Proc::spawn(
            name,
            bin,
            &["run", "--config", file.to_str().unwrap()],
            self.dir.path(),
        )
    }

    /// An agent streaming one test-pattern camera to the scenario's topic;
    /// its state directory is kept per camera, so a second run continues it.
    pub fn agent(&self, cam: &PatternCamera<'_>, extra_kafka: &str) -> Proc {
        self.agent_with(cam, extra_kafka, "")
    }

    /// Like [`Self::agent`], with extra tables (`[spool]`, `[http]`) appended.
    pub fn agent_with(&self, cam: &PatternCamera<'_>, extra_kafka: &str, extra: &str) -> Proc {
        let config = self.agent_config(cam, extra_kafka, extra);
        self.spawn(
            &format!("agent-{}", cam.id.replace('/', "-")),
            "camfleet-agent",
            &config,
        )
    }

    /// The agent's state directory for `camera` (sequence state, spool).
    pub fn agent_data(&self, camera: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("agent-data-{}", camera.replace('/', "-")))
    }

    pub fn agent_config(&self, cam: &PatternCamera<'_>, extra_kafka: &str, extra: &str) -> String {
        let data = self.agent_data(cam.id);
        agent_config(&self.services, &self.topic, &data, cam, extra_kafka, extra)
    }

    /// A collector archiving the scenario's topic to `root`; all collectors of
    /// a scenario share one consumer group, so a restart resumes the commits.
    pub fn collector(&self, name: &str, root: &str) -> Proc {
        self.spawn(name, "camfleet-collector", &self.collector_config(root))
    }

    pub fn collector_config(&self, root: &str) -> String {
        let group = format!("{}.collectors", self.topic);
        collector_config(&self.services, &self.topic, &group, root, 1000)
    }
}

/// A free 127.0.0.1 port, as `ip:port`.
pub fn free_local_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.0 GET; returns the body.
pub fn http_get(addr: &str, path: &str) -> String {
    let (status, body) = http_get_status(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A plain HTTP/1.0 GET; returns the status code and the body.
pub fn http_get_status(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {head}"));
    (status, body.to_string())
}

/// One whole frame as read back from the topic.
pub struct TopicFrame {
    pub meta: camfleet_shared::wire::FrameMeta,
    /// The `cf.evicted` header, if present.
    pub evicted: Option<String>,
    pub payload: Vec<u8>,
}

/// Reads every record of `topic` (all partitions, to the end), joining chunks.
pub fn read_topic(s: &Services, topic: &str) -> Vec<TopicFrame> {
    use camfleet_shared::wire;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::TopicPartitionList;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", format!("{topic}.checker"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = std::collections::HashMap::new();
    for p in 0..partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        remaining += hi - lo;
        ends.insert(p, hi);
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut reassembler = wire::Reassembler::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut read = 0i64;
    while read < remaining {
        assert!(
            Instant::now() < deadline,
            "read {read} of {remaining} records of {topic}"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        if msg.offset() >= ends[&msg.partition()] {
            continue;
        }
        read += 1;
        let headers: Vec<(&str, Option<&[u8]>)> = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let evicted = headers
            .iter()
            .find(|(k, _)| *k == wire::header::EVICTED)
            .and_then(|(_, v)| v.map(|v| String::from_utf8_lossy(v).into_owned()));
        let (meta, chunk) = wire::parse(msg.key(), headers).expect("agent records parse");
        if let Some((meta, payload)) = reassembler
            .push(meta, chunk, msg.payload().unwrap_or_default())
            .expect("chunks in order")
        {
            out.push(TopicFrame {
                meta,
                evicted,
                payload,
            });
        }
    }
    out
}

/// What a camera's records in the topic look like, in partition order.
#[derive(Debug, Default)]
pub struct StreamCheck {
    /// Distinct sequence numbers seen.
    pub distinct: u64,
    /// Records whose (camera, seq) was seen before.
    pub duplicates: u64,
    /// Records with a seq lower than an earlier record's (not duplicates).
    pub out_of_order: u64,
    /// Numbers in `[first, last]` never seen.
    pub missing: Vec<u64>,
    pub first: Option<u64>,
    pub last: Option<u64>,
}

pub fn check_stream(frames: &[TopicFrame], camera: &str) -> StreamCheck {
    let mut seen = std::collections::BTreeSet::new();
    let mut c = StreamCheck::default();
    let mut max = None::<u64>;
    for f in frames.iter().filter(|f| f.meta.camera.as_str() == camera) {
        let s = f.meta.seq;
        if !seen.insert(s) {
            c.duplicates += 1;
            continue;
        }
        if max.is_some_and(|m| s < m) {
            c.out_of_order += 1;
        }
        max = Some(max.map_or(s, |m| m.max(s)));
    }
    c.distinct = seen.len() as u64;
    c.first = seen.first().copied();
    c.last = seen.last().copied();
    if let (Some(a), Some(b)) = (c.first, c.last) {
        c.missing = (a..=b).filter(|s| !seen.contains(s)).collect();
    }
    c
}

/// Frames of one agent run that reached Kafka: acknowledged directly, or
/// spooled (a slow moment, a broker failover) and drained from the spool.
pub fn delivered(summary: &serde_json::Value) -> u64 {
    let get = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    get("frames_acked") + get("frames_drained")
}

/// The plaintext Mosquitto listener of `scripts/services`: (host, port).
pub fn mqtt_plain() -> (String, String) {
    (env("MQTT_HOST"), env("MQTT_PORT"))
}

/// The retained message of `topic` on the plaintext listener, as a fresh
/// subscriber gets it (Null when none arrives within `wait_s`).
pub fn mqtt_retained(topic: &str, wait_s: u32) -> serde_json::Value {
    let (host, port) = mqtt_plain();
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", &host, "-p", &port, "-t", topic, "-C", "1", "-W"])
        .arg(wait_s.to_string())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Runs `cmd` to the end and logs its status and output under `label`.
pub fn logged_output(cmd: &mut std::process::Command, label: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{label} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path from the environment `scripts/test` sets up (.services/env).
pub fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/setup and source .services/env (scripts/test does)")
    }))
}

/// JSON records of `topic` from its start, until `until` holds (2 min at most).
pub fn read_json(
    s: &Services,
    topic: &str,
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    read_json_explained(s, topic, until, String::new)
}

/// [`read_json`] of records `writer` publishes: a timeout shows what was
/// read and the writer's log.
pub fn read_json_logged(
    s: &Services,
    topic: &str,
    writer: &Proc,
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    read_json_explained(s, topic, until, || {
        format!("\n{} log:\n{}", writer.name, writer.log_text())
    })
}

fn read_json_explained(
    s: &Services,
    topic: &str,
    until: impl Fn(&[serde_json::Value]) -> bool,
    explain: impl Fn() -> String,
) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", format!("{topic}.reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !until(&out) {
        if Instant::now() >= deadline {
            panic!("{topic}: only {} records: {out:?}{}", out.len(), explain());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap());
        }
    }
    out
}

/// Horizontal centre of an object's normalised box in a detection record.
pub fn centre_x(o: &serde_json::Value) -> f64 {
    (o["box"]["x_min"].as_f64().unwrap() + o["box"]["x_max"].as_f64().unwrap()) / 2.0
}
