//! systemd's notify protocol, spoken by the real binaries to a datagram
//! socket the test owns (what systemd does for `Type=notify` units, with
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` in the environment), and the
//! collector's HTTP probes. Real Kafka from `scripts/services`.
//!
//! The agent's camera reads a Y4M stream from a FIFO the test writes, so the
//! test decides when frames flow and when the pipeline stalls (a capture
//! read that blocks, as a wedged camera does).

use camfleet_tests::*;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The service manager's end: every datagram received, with its arrival time.
struct NotifySocket {
    path: PathBuf,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (seen2, done2) = (seen.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done2.load(Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen2.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Self { path, seen, done }
    }

    fn env(&self) -> String {
        self.path.to_str().unwrap().to_string()
    }

    /// Arrival times of datagrams holding the line `line` (e.g. `READY=1`).
    fn times(&self, line: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
            .collect()
    }

    fn count_since(&self, line: &str, since: Instant) -> usize {
        self.times(line).iter().filter(|t| **t >= since).count()
    }

    /// The last `STATUS=` text.
    fn status(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|(_, m)| {
                m.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .next_back()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    fn wait_for(&self, line: &str, timeout: Duration, proc: &Proc) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.times(line).first() {
                return *t;
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {timeout:?}; received {:?}; log:\n{}",
                self.seen.lock().unwrap(),
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Relaxed);
    }
}

const W: usize = 64;
const H: usize = 48;

/// Writes Y4M frames into the FIFO every 100 ms while `feeding` is set.
fn feeder(mut fifo: std::fs::File, feeding: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut n = 0u8;
        while !stop.load(Relaxed) {
            if feeding.load(Relaxed) {
                n = n.wrapping_add(7);
                let mut frame = b"FRAME\n".to_vec();
                frame.extend(std::iter::repeat_n(n, W * H * 3 / 2));
                fifo.write_all(&frame).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Dropping the only writer gives the agent end of file.
    });
}

#[test]
fn agent_is_ready_only_after_a_frame_pings_while_frames_flow_and_stops_on_sigterm() {
    let s = Scenario::new("notify-agent", 1);
    let dir = s.dir.path();
    let notify = NotifySocket::bind(dir);
    let fifo = dir.join("camera.y4m");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Read+write: opening does not wait for the agent, and the agent sees
    // end of file only when this handle is dropped.
    let mut writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    writer
        .write_all(format!("YUV4MPEG2 W{W} H{H} F10:1 Ip C420jpeg\n").as_bytes())
        .unwrap();
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[[camera]]
id = "lab/fifo"
source = {{ kind = "y4m", path = "{fifo}", unpaced = true }}
encoder = {{ bitrate_kbps = 300, keyframe_interval_frames = 10 }}
[http]
listen = ""
"#,
        data = dir.join("agent-data").display(),
        kafka = s.services.kafka,
        topic = s.topic,
        fifo = fifo.display(),
    );
    let file = dir.join("agent.toml");
    std::fs::write(&file, config).unwrap();
    // Pings due every 1 s; a camera without a frame for 1 s is stalled.
    let agent = Proc::spawn_env(
        "agent",
        "camfleet-agent",
        &["run", "--config", file.to_str().unwrap()],
        dir,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );

    // The source opened (header read) but no picture came: not ready, and
    // once the stall limit (1 s) passed, the pipeline gets no pings.
    agent.wait_log(Duration::from_secs(30), "the camera streaming", |l| {
        l.contains("camera streaming")
    });
    let stalled_from = Instant::now() + Duration::from_millis(1200);
    std::thread::sleep(Duration::from_secs(4));
    assert!(notify.times("READY=1").is_empty(), "READY before any frame");
    assert_eq!(
        notify.count_since("WATCHDOG=1", stalled_from),
        0,
        "watchdog pinged while the pipeline had no frame: {:?}",
        notify.seen.lock().unwrap()
    );
    assert!(
        notify.status().contains("lab/fifo"),
        "STATUS should name the camera it waits for or that stalled: {:?}",
        notify.status()
    );

    // Frames flow: READY, then a ping at least every WATCHDOG_USEC.
    let feeding = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    feeder(writer.try_clone().unwrap(), feeding.clone(), stop.clone());
    let ready = notify.wait_for("READY=1", Duration::from_secs(20), &agent);
    std::thread::sleep(Duration::from_secs(5));
    let pings: Vec<Instant> = notify
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= ready)
        .collect();
    assert!(pings.len() >= 3, "{} pings in 5 s of video", pings.len());
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_secs(2),
        "pings {longest:?} apart: systemd would have restarted a healthy agent"
    );

    // The camera stalls (its read blocks): the pings stop.
    feeding.store(false, Relaxed);
    std::thread::sleep(Duration::from_millis(2500));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        notify.count_since("WATCHDOG=1", quiet_from),
        0,
        "watchdog pinged while the camera's pipeline was stalled"
    );
    assert!(
        notify.status().contains("stalled"),
        "STATUS: {:?}",
        notify.status()
    );

    // SIGTERM: STOPPING=1 at once; once the blocked read ends, a clean exit.
    agent.signal("TERM");
    let stopping = notify.wait_for("STOPPING=1", Duration::from_secs(5), &agent);
    assert!(stopping > quiet_from);
    stop.store(true, Relaxed);
    drop(writer);
    let summary = agent.wait_summary(Duration::from_secs(20));
    assert!(
        summary["frames_encoded"].as_u64().unwrap() >= 20,
        "{summary}"
    );
}

#[test]
fn collector_is_ready_once_in_its_group_pings_from_the_consume_loop_and_serves_probes() {
    let s = Scenario::new("notify-collector", 2);
    let dir = s.dir.path();
    let notify = NotifySocket::bind(dir);
    let http = free_local_addr();
    let archive = dir.join("archive");
    let config = s.collector_config(archive.to_str().unwrap()).replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"{http}\""),
    );
    let file = dir.join("collector.toml");
    std::fs::write(&file, config).unwrap();
    let collector = Proc::spawn_env(
        "collector",
        "camfleet-collector",
        &["run", "--config", file.to_str().unwrap()],
        dir,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let ready = notify.wait_for("READY=1", Duration::from_secs(30), &collector);
    assert!(
        collector.log_text().contains("partitions assigned"),
        "READY before joining the group"
    );
    let (status, body) = http_get_status(&http, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, body) = http_get_status(&http, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(http_get(&http, "/metrics").contains("camfleet_collector_records_consumed_total"));
    assert_eq!(http_get_status(&http, "/nope").0, 404);

    // An idle consume loop still turns, so the pings go on.
    std::thread::sleep(Duration::from_secs(5));
    let pings: Vec<Instant> = notify
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= ready)
        .collect();
    assert!(pings.len() >= 3, "{} pings in 5 s", pings.len());
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest < Duration::from_secs(2), "pings {longest:?} apart");

    collector.signal("TERM");
    notify.wait_for("STOPPING=1", Duration::from_secs(5), &collector);
    collector.wait_summary(Duration::from_secs(15));
}
