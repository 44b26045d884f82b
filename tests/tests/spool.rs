//! The agent's disk spool against the real broker, reached through a
//! fault-injecting proxy (the broker's EDGE listener advertises the proxy's
//! port, so the agent's link can be cut, black-holed, slowed or reset while
//! the collector and the checks use the broker directly).
//!
//! Every test here owns the one EDGE proxy port, so they run one at a time
//! (`EDGE` lock). Their names start with `spool_`: scripts/test runs them on
//! the one-node cluster only (the proxy fronts node 1).

use camfleet_tests::edge_link::{EdgeLink, LinkState};
use camfleet_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static EDGE: Mutex<()> = Mutex::new(());

/// The proxied link of one test; holds the EDGE lock while it lives.
struct Edge {
    link: EdgeLink,
    bootstrap: String,
    _guard: std::sync::MutexGuard<'static, ()>,
}

fn edge() -> Edge {
    let guard = EDGE.lock().unwrap_or_else(|p| p.into_inner());
    let port: u16 = std::env::var("KAFKA_EDGE_PROXY_PORT")
        .expect("KAFKA_EDGE_PROXY_PORT: run scripts/services up and source .services/env")
        .parse()
        .unwrap();
    let upstream = std::env::var("KAFKA_EDGE_UPSTREAM").expect("KAFKA_EDGE_UPSTREAM");
    Edge {
        link: EdgeLink::start(port, &upstream),
        bootstrap: format!("127.0.0.1:{port}"),
        _guard: guard,
    }
}

/// An agent of `run` that reaches Kafka only through the edge link.
fn edge_agent(run: &Scenario, e: &Edge, cam: &PatternCamera<'_>, extra: &str) -> Proc {
    let config = run
        .agent_config(cam, "", extra)
        .replace(&run.services.kafka, &e.bootstrap);
    run.spawn(
        &format!("agent-{}", cam.id.replace('/', "-")),
        "camfleet-agent",
        &config,
    )
}

fn camera(id: &str, width: u32, height: u32, frames: u64, paced: bool) -> PatternCamera<'_> {
    PatternCamera {
        id,
        width,
        height,
        fps: 30,
        frames,
        paced,
    }
}

/// `camfleet-agent spool <cmd>` on the config the scenario wrote for `camera`.
fn spool_cli(run: &Scenario, camera: &str, args: &[&str]) -> std::process::Output {
    let config = run
        .dir
        .path()
        .join(format!("agent-{}.toml", camera.replace('/', "-")));
    Command::new(binary("camfleet-agent"))
        .arg("spool")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap()
}

fn spool_status(run: &Scenario, camera: &str) -> serde_json::Value {
    let out = spool_cli(run, camera, &["status", "--json"]);
    assert!(
        out.status.success(),
        "spool status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_verifies(run: &Scenario, camera: &str) {
    let out = spool_cli(run, camera, &["verify"]);
    assert!(
        out.status.success(),
        "spool verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Waits until the agent's log shows it spooling (Kafka not keeping up).
fn wait_spooling(agent: &Proc) {
    agent.wait_log(
        Duration::from_secs(30),
        "the agent to start spooling",
        |l| l.contains("spooling to disk"),
    );
}

/// Frames a paced (live) camera encoded: all `n` it captured, except those
/// it dropped, counted, because the encoder was busy (a loaded machine);
/// dropped frames were never accepted, so the stream has no gap for them.
fn encoded_of(summary: &serde_json::Value, n: u64) -> u64 {
    let encoded = u(summary, "frames_encoded");
    assert_eq!(encoded + u(summary, "frames_dropped_busy"), n, "{summary}");
    assert!(encoded >= n * 99 / 100, "more than 1% dropped: {summary}");
    encoded
}

#[test]
fn spool_a_60_s_broker_outage_loses_no_frame_and_the_archive_has_them_all() {
    let e = edge();
    let run = Scenario::new("outage60", 1);
    let (w, h) = (1280, 720);
    let n = 30 * 85;
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    let metrics = free_local_addr();
    let http = format!("[http]\nlisten = \"{metrics}\"\n");
    let agent = edge_agent(&run, &e, &camera("site/outage", w, h, n, true), &http);
    std::thread::sleep(Duration::from_secs(10));
    e.link.set_state(LinkState::Refuse);
    let down = Instant::now();
    wait_spooling(&agent);
    std::thread::sleep(Duration::from_secs(20));
    // Ops see the backlog while the agent runs: the CLI asks it over its
    // control socket, and Prometheus scrapes it.
    let st = spool_status(&run, "site/outage");
    assert_eq!(st["agent_running"], true, "{st}");
    assert_eq!(st["cameras"][0]["route"], "spool", "{st}");
    assert!(u(&st["cameras"][0], "frames") >= 30 * 15, "{st}");
    assert!(
        st["cameras"][0]["oldest_age_s"].as_f64().unwrap() >= 15.0,
        "{st}"
    );
    assert_verifies(&run, "site/outage");
    let text = http_get(&metrics, "/metrics");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    };
    assert!(value("camfleet_agent_spool_bytes") > 1e6, "{text}");
    assert!(
        value("camfleet_agent_spool_oldest_age_seconds") >= 15.0,
        "{text}"
    );
    assert!(
        value("camfleet_agent_frames_spooled_total") >= 450.0,
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    e.link.set_state(LinkState::Up);
    agent.wait_log(Duration::from_secs(60), "the spool to drain", |l| {
        l.contains("spool drained")
    });
    let summary = agent.wait_summary(Duration::from_secs(60));
    eprintln!("agent: {summary}");
    let n = encoded_of(&summary, n);
    assert_eq!(u(&summary, "frames_failed"), 0, "{summary}");
    assert_eq!(u(&summary, "frames_evicted"), 0, "{summary}");
    assert!(u(&summary, "frames_spooled") >= 30 * 55, "{summary}");
    assert_eq!(
        u(&summary, "frames_drained"),
        u(&summary, "frames_spooled"),
        "{summary}"
    );
    // An independent reader of the topic: every frame, in order, once.
    let frames = read_topic(&run.services, &run.topic);
    let c = check_stream(&frames, "site/outage");
    assert_eq!((c.first, c.last), (Some(0), Some(n - 1)), "{c:?}");
    assert!(c.missing.is_empty(), "{c:?}");
    assert_eq!(c.out_of_order, 0, "{c:?}");
    assert_eq!(c.duplicates, 0, "{c:?}");
    // The collector archives all of them; ffprobe counts them.
    wait_until(Duration::from_secs(90), "every frame archived", || {
        segments_under(&root)
            .iter()
            .map(|s| ffprobe_frames(s).3)
            .sum::<u64>()
            == n
    });
    collector.signal("TERM");
    let cs = collector.wait_summary(Duration::from_secs(20));
    assert_eq!(u(&cs, "sequence_gap_frames"), 0, "{cs}");
}

/// SIGKILL while the broker is away, restart, then the broker returns:
/// everything the spool held (accepted) arrives, and the sequence continues
/// exactly where the durable state says, so Kafka sees no gap at all.
fn sigkill_during_outage(mode: &str) {
    let e = edge();
    let run = Scenario::new(&format!("kill-{mode}"), 1);
    let id = "site/killed";
    let spool = format!("[spool]\nmode = \"{mode}\"\n");
    let agent = edge_agent(&run, &e, &camera(id, 640, 360, 100_000, true), &spool);
    std::thread::sleep(Duration::from_secs(3));
    e.link.set_state(LinkState::Refuse);
    if mode == "outage" {
        wait_spooling(&agent);
    }
    // (In `always` mode every frame is spooled before it is sent.)
    std::thread::sleep(Duration::from_secs(4));
    agent.signal("KILL");
    drop(agent);
    // What the spool holds now is what was accepted and not yet in Kafka.
    let st = spool_status(&run, id);
    assert_eq!(st["agent_running"], false, "{st}");
    let cam = &st["cameras"][0];
    let held_last = u(cam, "last_seq");
    assert!(u(cam, "frames") >= 60, "{st}");
    assert_verifies(&run, id);
    // Restart while the broker is still away; then it comes back.
    let more = 300;
    let agent = edge_agent(&run, &e, &camera(id, 640, 360, more, true), &spool);
    std::thread::sleep(Duration::from_secs(2));
    e.link.set_state(LinkState::Up);
    if mode == "outage" {
        agent.wait_log(Duration::from_secs(30), "the spool to drain", |l| {
            l.contains("spool drained")
        });
    }
    let summary = agent.wait_summary(Duration::from_secs(60));
    eprintln!("{mode}: spool held up to #{held_last}; second run: {summary}");
    let next = u(&summary, "seq_next");
    assert!(u(&summary, "seq_first") <= held_last + 1, "{summary}");
    let frames = read_topic(&run.services, &run.topic);
    let c = check_stream(&frames, id);
    assert_eq!((c.first, c.last), (Some(0), Some(next - 1)), "{c:?}");
    assert!(
        c.missing.is_empty(),
        "no accepted frame lost, no gap: {c:?}"
    );
    assert_eq!(c.out_of_order, 0, "{c:?}");
    eprintln!(
        "{mode}: {} duplicates (frames in flight at the kill, sent again)",
        c.duplicates
    );
}

#[test]
fn spool_sigkill_during_an_outage_loses_no_accepted_frame_outage_mode() {
    sigkill_during_outage("outage");
}

#[test]
fn spool_sigkill_during_an_outage_loses_no_accepted_frame_always_mode() {
    sigkill_during_outage("always");
}

#[test]
fn spool_an_agent_started_with_the_broker_down_spools_then_drains() {
    let e = edge();
    e.link.set_state(LinkState::Refuse);
    let run = Scenario::new("offline-boot", 1);
    let id = "site/offline";
    let n = 300;
    let agent = edge_agent(&run, &e, &camera(id, 640, 360, n, true), "");
    wait_spooling(&agent);
    std::thread::sleep(Duration::from_secs(3));
    e.link.set_state(LinkState::Up);
    agent.wait_log(Duration::from_secs(30), "the spool to drain", |l| {
        l.contains("spool drained")
    });
    let summary = agent.wait_summary(Duration::from_secs(60));
    let n = encoded_of(&summary, n);
    // The first frames waited for the broker too: all of them went via the spool.
    assert!(u(&summary, "frames_spooled") >= 60, "{summary}");
    assert_eq!(
        u(&summary, "frames_drained"),
        u(&summary, "frames_spooled"),
        "{summary}"
    );
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!(
        (c.first, c.last, c.distinct),
        (Some(0), Some(n - 1), n),
        "{c:?}"
    );
    assert_eq!(c.out_of_order, 0, "{c:?}");
}

/// Decodes `payload` (Annex-B) with ffmpeg; returns the pictures decoded.
fn ffmpeg_decodes(dir: &Path, name: &str, payload: &[u8]) -> u64 {
    let file = dir.join(name);
    std::fs::write(&file, payload).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            "-f",
            "h264",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn spool_sigterm_during_an_outage_exits_within_10_s_and_the_next_start_drains() {
    let e = edge();
    let run = Scenario::new("term-outage", 1);
    let id = "site/term";
    let agent = edge_agent(&run, &e, &camera(id, 640, 360, 100_000, true), "");
    std::thread::sleep(Duration::from_secs(2));
    e.link.set_state(LinkState::Blackhole);
    wait_spooling(&agent);
    std::thread::sleep(Duration::from_secs(2));
    agent.signal("TERM");
    let t = Instant::now();
    let first = agent.wait_summary(Duration::from_secs(10));
    let took = t.elapsed();
    eprintln!("stopped {took:?} after SIGTERM: {first}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let encoded = u(&first, "frames_encoded");
    e.link.set_state(LinkState::Up);
    let second = edge_agent(&run, &e, &camera(id, 640, 360, 30, true), "")
        .wait_summary(Duration::from_secs(60));
    assert_eq!(
        u(&second, "seq_first"),
        encoded,
        "exact sequence after a clean stop: {second}"
    );
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!((c.first, c.last), (Some(0), Some(encoded + 29)), "{c:?}");
    assert!(c.missing.is_empty() && c.out_of_order == 0, "{c:?}");
}

#[test]
fn spool_a_budget_too_small_evicts_only_whole_oldest_gops_and_reports_them() {
    let e = edge();
    e.link.set_state(LinkState::Refuse);
    let run = Scenario::new("budget", 1);
    let id = "site/budget";
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    // ~14 KB frames at 8 Mbit/s (as fast as the encoder goes): 4500 of them
    // are ~64 MB, twice what the 64 MiB budget keeps.
    let spool = "[spool]\nmax_bytes = 67108864\nswitch_after_ms = 500\n";
    let n = 4500;
    let cam = camera(id, 1280, 720, n, false);
    let config = run
        .agent_config(&cam, "", spool)
        .replace("bitrate_kbps = 1500", "bitrate_kbps = 8000")
        .replace(&run.services.kafka, &e.bootstrap);
    let first = run.spawn("agent-site-budget", "camfleet-agent", &config);
    let s1 = first.wait_summary(Duration::from_secs(120));
    eprintln!("offline run: {s1}");
    let evicted = u(&s1, "frames_evicted");
    assert!(evicted > 1000, "{s1}");
    assert_verifies(&run, id);
    let st = spool_status(&run, id);
    assert!(
        u(&st, "disk_bytes") <= 64 << 20,
        "budget is on real disk bytes: {st}"
    );
    // The link returns; a short second run drains the spool.
    e.link.set_state(LinkState::Up);
    let cam2 = camera(id, 1280, 720, 15, false);
    let config = run
        .agent_config(&cam2, "", spool)
        .replace("bitrate_kbps = 1500", "bitrate_kbps = 8000")
        .replace(&run.services.kafka, &e.bootstrap);
    let s2 = run
        .spawn("agent-site-budget", "camfleet-agent", &config)
        .wait_summary(Duration::from_secs(120));
    eprintln!("drain run: {s2}");
    let frames = read_topic(&run.services, &run.topic);
    let c = check_stream(&frames, id);
    assert_eq!(c.out_of_order + c.duplicates, 0, "{c:?}");
    // Exactly the evicted numbers are missing, and each was announced.
    let announced: Vec<(u64, String)> = frames
        .iter()
        .filter_map(|f| Some((f.meta.seq, f.evicted.clone()?)))
        .collect();
    let mut numbers: Vec<u64> = announced
        .iter()
        .flat_map(|(_, v)| camfleet_shared::wire::parse_evicted(v).unwrap())
        .flatten()
        .collect();
    numbers.sort();
    assert!(
        numbers == c.missing,
        "cf.evicted must list exactly the missing frames, once: announced {announced:?}, {} missing from #{:?} to #{:?}",
        c.missing.len(),
        c.missing.first(),
        c.missing.last()
    );
    assert_eq!(c.missing.len() as u64, evicted, "{c:?}");
    // What remains decodes: every run between gaps starts at a keyframe and
    // ffmpeg decodes each picture of it.
    let mut runs: Vec<Vec<&TopicFrame>> = vec![];
    for f in &frames {
        match runs.last_mut() {
            Some(r) if r.last().unwrap().meta.seq + 1 == f.meta.seq => r.push(f),
            _ => runs.push(vec![f]),
        }
    }
    assert!(runs.len() > 1, "evictions make gaps");
    for (i, r) in runs.iter().enumerate() {
        assert!(
            r[0].meta.keyframe,
            "run {i} starts at #{} which is not a keyframe",
            r[0].meta.seq
        );
        let bytes: Vec<u8> = r.iter().flat_map(|f| f.payload.iter().copied()).collect();
        let decoded = ffmpeg_decodes(run.dir.path(), &format!("run{i}.h264"), &bytes);
        assert_eq!(decoded, r.len() as u64, "run {i} from #{}", r[0].meta.seq);
    }
    // The collector reports exactly those frames as evicted at the edge.
    wait_until(
        Duration::from_secs(60),
        "the collector to archive the rest",
        || {
            segments_under(&root)
                .iter()
                .map(|s| ffprobe_frames(s).3)
                .sum::<u64>()
                == c.distinct
        },
    );
    collector.signal("TERM");
    let cs = collector.wait_summary(Duration::from_secs(20));
    assert_eq!(u(&cs, "sequence_gap_frames"), evicted, "{cs}");
    assert_eq!(
        u(&cs, "sequence_gap_frames_evicted_at_edge"),
        evicted,
        "{cs}"
    );
    // And records them in the archive index's gaps table, with the reason.
    let out = std::process::Command::new(binary("camfleet-collector"))
        .args(["archive", "ls", "--json", "--config"])
        .arg(run.dir.path().join("collector.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gaps = ls["gaps"].as_array().unwrap();
    assert!(
        gaps.iter().all(|g| g["reason"] == "evicted_at_edge"),
        "{gaps:?}"
    );
    let mut indexed: Vec<u64> = gaps
        .iter()
        .flat_map(|g| {
            g["first_missing_seq"].as_u64().unwrap()..=g["last_missing_seq"].as_u64().unwrap()
        })
        .collect();
    indexed.sort();
    assert_eq!(indexed, c.missing, "gaps in the index vs missing numbers");
}

#[test]
fn spool_a_corrupt_spool_is_quarantined_and_the_agent_streams() {
    let e = edge();
    let run = Scenario::new("corrupt", 1);
    let id = "site/corrupt";
    let db = run.agent_data(id).join("spool").join("db");
    std::fs::create_dir_all(db.join("blobs")).unwrap();
    std::fs::write(db.join("conf"), b"\xff\xfenot a sled config at all").unwrap();
    std::fs::write(db.join("db"), vec![0x5a; 100_000]).unwrap();
    std::fs::write(db.join("blobs").join("17"), b"garbage").unwrap();
    let n = 90;
    let summary = edge_agent(&run, &e, &camera(id, 320, 240, n, false), "")
        .wait_summary(Duration::from_secs(60));
    assert_eq!(u(&summary, "frames_encoded"), n, "{summary}");
    let quarantine: Vec<PathBuf> = std::fs::read_dir(run.agent_data(id).join("spool/quarantine"))
        .expect("a quarantine directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    assert!(quarantine[0].join("conf").exists(), "kept for inspection");
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!((c.first, c.distinct), (Some(0), n), "{c:?}");
    assert_verifies(&run, id);
}

/// A small pseudo-random sequence for the SIGKILL storm (seed printed, so a
/// failure can be replayed with `CAMFLEET_STORM_SEED`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The `key=value` field of the agent's "spool opened" log line.
fn opened_field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"));
    line[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn spool_fifty_sigkills_while_the_broker_flaps_lose_nothing_accepted() {
    let e = edge();
    let run = Scenario::new("storm", 1);
    let id = "site/storm";
    let spool = "[spool]\nmode = \"always\"\n";
    let seed = std::env::var("CAMFLEET_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("storm seed {seed}");
    let mut rng = Lcg(seed);
    let mut worst = (0u64, 0u64);
    for i in 0..50 {
        e.link.set_state(match rng.next(3) {
            0 => LinkState::Up,
            1 => LinkState::Refuse,
            _ => LinkState::Blackhole,
        });
        let agent = edge_agent(&run, &e, &camera(id, 640, 360, 100_000, true), spool);
        agent.wait_log(Duration::from_secs(30), "the spool to open", |l| {
            l.lines().filter(|l| l.contains("spool opened")).count() > i
        });
        // After every crash recovery (and reclaim), the files stay within
        // twice the live data plus sled's fixed overhead (no leak piles up).
        let log = agent.log_text();
        let line = log
            .lines()
            .filter(|l| l.contains("spool opened"))
            .nth(i)
            .unwrap();
        let (live, disk) = (
            opened_field(line, "live_bytes"),
            opened_field(line, "disk_bytes"),
        );
        assert!(disk <= 2 * live + (16 << 20), "start {i}: {line}");
        if disk > worst.1 {
            worst = (live, disk);
        }
        std::thread::sleep(Duration::from_millis(200 + rng.next(1300)));
        agent.signal("KILL");
    }
    eprintln!(
        "largest spool after a crash: {} bytes on disk for {} live",
        worst.1, worst.0
    );
    assert_verifies(&run, id);
    e.link.set_state(LinkState::Up);
    let summary = edge_agent(&run, &e, &camera(id, 640, 360, 30, true), spool)
        .wait_summary(Duration::from_secs(120));
    let next = u(&summary, "seq_next");
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    eprintln!("after 50 SIGKILLs: {c:?} (duplicates are frames acknowledged whose deletion the kill cut short)");
    assert_eq!((c.first, c.last), (Some(0), Some(next - 1)), "{}", summary);
    assert!(
        c.missing.is_empty(),
        "accepted frames lost: {:?}",
        &c.missing[..c.missing.len().min(20)]
    );
    assert_eq!(c.out_of_order, 0);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (scripts/test runs as root in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn spool_a_filesystem_at_its_free_space_floor_is_treated_like_a_full_budget() {
    let e = edge();
    e.link.set_state(LinkState::Refuse);
    let run = Scenario::new("floor", 1);
    let id = "site/floor";
    let disk = SmallDisk::mount(run.dir.path().join("small-disk"), "160m");
    // Something else on the box already took 40 MiB.
    std::fs::write(disk.0.join("other-data"), vec![7u8; 40 << 20]).unwrap();
    let spool = format!(
        "[spool]\ndir = \"{}\"\nmax_bytes = 1073741824\nmin_free_bytes = 67108864\nswitch_after_ms = 500\n",
        disk.0.join("spool").display()
    );
    let cam = camera(id, 1280, 720, 4500, false);
    let config = run
        .agent_config(&cam, "", &spool)
        .replace("bitrate_kbps = 1500", "bitrate_kbps = 8000")
        .replace(&run.services.kafka, &e.bootstrap);
    let agent = run.spawn("agent-site-floor", "camfleet-agent", &config);
    let mut lowest_free = u64::MAX;
    while agent.log_text().matches("camera stopped").count() == 0 {
        lowest_free = lowest_free.min(camfleet_agent::spool::store::free_bytes(&disk.0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = agent.wait_summary(Duration::from_secs(60));
    eprintln!("{summary}; lowest free space {lowest_free}");
    assert!(u(&summary, "frames_evicted") > 1000, "{summary}");
    assert_eq!(u(&summary, "frames_failed"), 0, "{summary}");
    // It never ate into the floor by more than one second of writes.
    assert!(lowest_free >= 40 << 20, "free space fell to {lowest_free}");
    let st = spool_status(&run, id);
    assert!(
        st["cameras"][0]["evicted_unreported"][0]["reason"] == "disk_floor",
        "{st}"
    );
    assert_verifies(&run, id);
}

#[test]
fn spool_a_slow_link_that_resets_connections_loses_nothing_and_keeps_order() {
    let e = edge();
    e.link.set_latency(Duration::from_millis(60));
    e.link.set_reset_after(Some(Duration::from_secs(3)));
    let run = Scenario::new("flaky", 1);
    let id = "site/flaky";
    let n = 30 * 20;
    let summary = edge_agent(&run, &e, &camera(id, 640, 360, n, true), "")
        .wait_summary(Duration::from_secs(90));
    let resets = e.link.resets();
    eprintln!("{summary}; proxy resets {resets}");
    assert!(resets >= 3, "the link was reset {resets} times");
    assert_eq!(u(&summary, "frames_failed"), 0, "{summary}");
    let n = encoded_of(&summary, n);
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!(
        (c.first, c.last, c.distinct),
        (Some(0), Some(n - 1), n),
        "{c:?}"
    );
    assert_eq!(c.out_of_order, 0, "{c:?}");
    eprintln!("duplicates: {}", c.duplicates);
}

/// The agent in its own network namespace, reaching the broker over a veth
/// pair: `ip link set down` cuts the cable (packets vanish; no reset, no
/// refusal), as a site's uplink failing does.
struct Netns {
    name: String,
    veth: String,
    forwarders: Vec<std::process::Child>,
}

impl Netns {
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {} (network namespaces need root)",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Namespace `name`; inside it, 127.0.0.1:`port` forwards over the veth
    /// to `upstream` (the broker's EDGE listener) in the root namespace.
    fn create(name: &str, port: u16, upstream: &str) -> Self {
        let n = std::process::id() % 200 + 20;
        let (veth, peer) = (format!("cfh{n}"), format!("cfn{n}"));
        let (host_ip, ns_ip) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = Command::new("ip").args(["link", "del", &veth]).status();
        Self::ip(&["netns", "add", name]);
        let mut me = Self {
            name: name.into(),
            veth: veth.clone(),
            forwarders: vec![],
        };
        Self::ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        Self::ip(&["link", "set", &peer, "netns", name]);
        Self::ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth]);
        Self::ip(&["link", "set", &veth, "up"]);
        for args in [
            vec!["addr", "add", &format!("{ns_ip}/30"), "dev", &peer],
            vec!["link", "set", &peer, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", name, "ip"];
            full.extend(args.iter().map(|s| &**s));
            Self::ip(&full);
        }
        let relay = format!("{host_ip}:{port}");
        let spawn = |cmd: &mut Command| {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("socat is installed by scripts/setup")
        };
        me.forwarders.push(spawn(
            Command::new("socat")
                .arg(format!("TCP-LISTEN:{port},bind={host_ip},reuseaddr,fork"))
                .arg(format!("TCP:{upstream}")),
        ));
        me.forwarders.push(spawn(
            Command::new("ip")
                .args(["netns", "exec", name, "socat"])
                .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
                .arg(format!("TCP:{relay}")),
        ));
        wait_until(Duration::from_secs(10), "the forwarders to listen", || {
            std::net::TcpStream::connect(&relay).is_ok()
        });
        me
    }

    fn link(&self, up: bool) {
        Self::ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for f in &mut self.forwarders {
            let _ = f.kill();
            let _ = f.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn spool_a_site_uplink_cut_for_60_s_loses_nothing_and_drains_by_itself() {
    // Holds the EDGE lock: the namespace's forwarder uses the proxy port number.
    let e = edge();
    let port = e.bootstrap.rsplit(':').next().unwrap().parse().unwrap();
    drop(e.link);
    let upstream = std::env::var("KAFKA_EDGE_UPSTREAM").unwrap();
    let ns = Netns::create(&format!("cf-edge-{}", std::process::id()), port, &upstream);
    let run = Scenario::new("uplink", 1);
    let id = "site/uplink";
    let n = 30 * 85;
    let cam = camera(id, 640, 360, n, true);
    let file = run.dir.path().join("agent-uplink.toml");
    std::fs::write(
        &file,
        run.agent_config(&cam, "", "")
            .replace(&run.services.kafka, &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let log = run.dir.path().join("agent-uplink.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary("camfleet-agent"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .env("RUST_LOG", "info,librdkafka=warn")
        .spawn()
        .unwrap();
    let agent = Proc {
        child,
        log,
        name: "agent in netns".into(),
    };
    std::thread::sleep(Duration::from_secs(10));
    ns.link(false);
    let cut = Instant::now();
    wait_spooling(&agent);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed()));
    ns.link(true);
    agent.wait_log(
        Duration::from_secs(120),
        "the spool to drain by itself",
        |l| l.contains("spool drained"),
    );
    let summary = agent.wait_summary(Duration::from_secs(60));
    eprintln!("{summary}");
    let n = encoded_of(&summary, n);
    assert!(u(&summary, "frames_spooled") >= 30 * 50, "{summary}");
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!(
        (c.first, c.last, c.distinct),
        (Some(0), Some(n - 1), n),
        "{c:?}"
    );
    assert_eq!(c.out_of_order, 0, "{c:?}");
    eprintln!("duplicates: {}", c.duplicates);
}

#[test]
fn spool_validate_checks_the_spool_directory_and_budget() {
    let run = Scenario::new("validate", 1);
    let cam = camera("site/v", 320, 240, 10, false);
    let file = run.dir.path().join("agent.toml");
    let validate = |extra: &str| {
        std::fs::write(&file, run.agent_config(&cam, "", extra)).unwrap();
        Command::new(binary("camfleet-agent"))
            .args(["validate", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let ok = validate("");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok spool"));
    // A directory that cannot exist (under a regular file).
    let blocker = run.dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = validate(&format!(
        "[spool]\ndir = \"{}\"\n",
        blocker.join("spool").display()
    ));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("spool.dir") && err.contains("a-file"), "{err}");
    // A floor larger than the disk.
    let bad = validate("[spool]\nmin_free_bytes = 1000000000000000\n");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("spool.min_free_bytes"),
        "{err}"
    );
    // Typos and nonsense are named.
    let bad = validate("[spool]\nmode = \"sometimes\"\n");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("sometimes"), "{err}");
}
