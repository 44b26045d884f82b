//! The agent's fleet link against the real Mosquitto, read by the Mosquitto
//! client tools (a peer): a retained "online" status and telemetry with the
//! camera's real frame rate while it runs; the broker's will marks it
//! "offline, connection lost" after a SIGKILL; a clean stop leaves
//! "offline, stopped"; the video never depends on MQTT.

use camfleet_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `mosquitto_sub -v` on `topic` in the background: lines `topic payload`.
fn subscribe(
    topic: &str,
) -> (
    std::process::Child,
    mpsc::Receiver<(String, serde_json::Value)>,
) {
    let (host, port) = mqtt_plain();
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", &host, "-p", &port, "-v", "-t", topic])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some((t, p)) = line.split_once(' ') {
                if let Ok(v) = serde_json::from_str(p) {
                    let _ = tx.send((t.to_string(), v));
                }
            }
        }
    });
    (child, rx)
}

/// The retained status, as a fresh subscriber gets it.
fn retained_status(topic: &str) -> serde_json::Value {
    mqtt_retained(topic, 5)
}

fn wait_for(
    rx: &mpsc::Receiver<(String, serde_json::Value)>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, v)) if pred(&t, &v) => return v,
            Ok(_) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

#[test]
fn fleet_status_telemetry_and_last_will_on_mosquitto() {
    let run = Scenario::new("fleet", 1);
    let agent_id = format!("box-{}", std::process::id());
    let base = format!("camfleet/agents/{agent_id}");
    let (host, port) = mqtt_plain();
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[mqtt]
url = "mqtt://{host}:{port}"
agent_id = "{agent_id}"
telemetry_period_s = 1
keep_alive_s = 5
[[camera]]
id = "fleet/gate"
source = {{ kind = "test_pattern", width = 320, height = 192, fps = 30 }}
encoder = {{ bitrate_kbps = 500, keyframe_interval_frames = 30 }}
"#,
        data = run.dir.path().join("agent-data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
    );
    let (mut sub, rx) = subscribe(&format!("{base}/#"));
    std::thread::sleep(Duration::from_millis(300));

    let agent = run.spawn("agent", "camfleet-agent", &config);
    let online = wait_for(&rx, Duration::from_secs(15), "status online", |t, v| {
        t.ends_with("/status") && v["state"] == "online"
    });
    assert_eq!(online["cameras"][0], "fleet/gate", "{online}");
    // Telemetry: the camera's real rate, measured over each period.
    for _ in 0..2 {
        let t = wait_for(&rx, Duration::from_secs(10), "telemetry", |t, _| {
            t.ends_with("/telemetry")
        });
        let cam = &t["cameras"][0];
        let fps = cam["fps"].as_f64().unwrap();
        if fps > 0.0 {
            assert!((25.0..=35.0).contains(&fps), "{t}");
            assert_eq!(cam["up"], true, "{t}");
            assert!(cam["bitrate_kbps"].as_f64().unwrap() > 0.0, "{t}");
        }
        assert!(t["spool"]["free_bytes"].as_u64().unwrap() > 0, "{t}");
        assert_eq!(t["spool"]["frames_evicted_total"], 0, "{t}");
        assert_eq!(t["kafka"]["state"], "ok", "{t}");
        assert!(
            t["time_us"].as_u64().unwrap() > 0 && t["uptime_s"].is_u64(),
            "{t}"
        );
    }
    assert_eq!(
        retained_status(&format!("{base}/status"))["state"],
        "online"
    );

    // SIGKILL: the broker's will says so, retained, within ~1.5 keep-alives.
    agent.signal("KILL");
    let gone = wait_for(&rx, Duration::from_secs(20), "the last will", |t, v| {
        t.ends_with("/status") && v["state"] == "offline"
    });
    assert_eq!(gone["reason"], "connection lost", "{gone}");
    assert_eq!(
        retained_status(&format!("{base}/status"))["reason"],
        "connection lost"
    );

    // Back, then a clean stop: "offline, stopped", and the video went to Kafka.
    let agent = run.spawn("agent-2", "camfleet-agent", &config);
    wait_for(
        &rx,
        Duration::from_secs(15),
        "status online again",
        |t, v| t.ends_with("/status") && v["state"] == "online",
    );
    std::thread::sleep(Duration::from_secs(1));
    agent.signal("TERM");
    let summary = agent.wait_summary(Duration::from_secs(15));
    assert!(delivered(&summary) > 0, "{summary}");
    let stopped = wait_for(
        &rx,
        Duration::from_secs(5),
        "status offline, stopped",
        |t, v| t.ends_with("/status") && v["state"] == "offline",
    );
    assert_eq!(stopped["reason"], "stopped", "{stopped}");
    assert_eq!(
        retained_status(&format!("{base}/status"))["reason"],
        "stopped"
    );
    let _ = sub.kill();
}
