//! Desired config over MQTT against the real Mosquitto and Kafka, driven by
//! the `camfleet` ops CLI and checked with the Mosquitto client tools and
//! the records in Kafka (docs/mqtt.md):
//!
//! * a bitrate change while streaming is applied live: the camera's next
//!   records carry a new epoch and the measured bitrate follows within
//!   10%; a second camera added over MQTT streams, removed it stops, and
//!   the first camera's sequence never breaks; after SIGKILL the will says
//!   offline, and a restart without MQTT runs the last applied config;
//! * bad documents (table below) are each rejected with the reason on the
//!   status topic while the agent keeps streaming on its last good config;
//!   `camfleet wait` names the agent that rejected a version.

use camfleet_shared::fleet::{self, DesiredDoc, Scope};
use camfleet_tests::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The retained message of `topic`, as a fresh subscriber gets it.
fn retained(topic: &str) -> serde_json::Value {
    mqtt_retained(topic, 3)
}

/// Polls the retained status until `pred` holds.
fn wait_status(
    agent: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let topic = format!("camfleet/agents/{agent}/status");
    let deadline = Instant::now() + timeout;
    loop {
        let v = retained(&topic);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; status: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn publish_retained(topic: &str, payload: &[u8], dir: &std::path::Path) {
    let (host, port) = mqtt_plain();
    let file = dir.join("payload.bin");
    std::fs::write(&file, payload).unwrap();
    let ok = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "-r", "-q", "1", "-t", topic, "-f"])
        .arg(&file)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub {topic}");
}

fn clear_retained(topics: &[String]) {
    let (host, port) = mqtt_plain();
    for t in topics {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", &host, "-p", &port, "-r", "-n", "-t", t])
            .status();
    }
}

/// Runs the ops CLI against the test broker.
fn camfleet(args: &[&str]) -> Output {
    let (host, port) = mqtt_plain();
    logged_output(
        Command::new(binary("camfleet"))
            .args(args)
            .env("CAMFLEET_MQTT_URL", format!("mqtt://{host}:{port}")),
        &format!("camfleet {args:?}"),
    )
}

fn camfleet_ok(args: &[&str]) -> String {
    let out = camfleet(args);
    assert!(out.status.success(), "camfleet {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent_toml(run: &Scenario, agent_id: &str, site: &str, url: &str, extra_mqtt: &str) -> String {
    format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[spool]
mode = "always"
[mqtt]
url = "{url}"
agent_id = "{agent_id}"
site = "{site}"
telemetry_period_s = 1
keep_alive_s = 5
{extra_mqtt}
[[camera]]
id = "fleetcfg/gate"
source = {{ kind = "test_pattern", width = 640, height = 360, fps = 30 }}
encoder = {{ bitrate_kbps = 1000, keyframe_interval_frames = 30 }}
"#,
        data = run.dir.path().join("agent-data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
    )
}

/// kbit/s of a run of frames at 30 fps.
fn kbps(frames: &[&TopicFrame]) -> f64 {
    let bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
    bytes as f64 * 8.0 / (frames.len() as f64 / 30.0) / 1000.0
}

/// An agent of `site` streaming one camera, online on the test broker.
fn start_agent(run: &Scenario, agent_id: &str, site: &str) -> Proc {
    let (host, port) = mqtt_plain();
    let url = format!("mqtt://{host}:{port}");
    let agent = run.spawn(
        "agent",
        "camfleet-agent",
        &agent_toml(run, agent_id, site, &url, ""),
    );
    wait_status(agent_id, Duration::from_secs(20), "online", |s| {
        s["state"] == "online"
    });
    std::thread::sleep(Duration::from_secs(2));
    agent
}

#[test]
fn bitrate_change_and_cameras_added_and_removed_live_then_restart_without_mqtt() {
    let run = Scenario::new("fleetcfg", 1);
    let agent_id = format!("live-{}", std::process::id());
    let site = format!("site-{}", std::process::id());
    let topics = [
        format!("camfleet/agents/{agent_id}/desired"),
        format!("camfleet/agents/{agent_id}/status"),
        format!("camfleet/agents/{agent_id}/telemetry"),
    ];
    let agent = start_agent(&run, &agent_id, &site);

    // The bitrate, through the CLI, while streaming.
    let out = camfleet_ok(&[
        "patch",
        "--agent",
        &agent_id,
        "camera[fleetcfg/gate].encoder.bitrate_kbps=200",
    ]);
    assert!(out.contains("version 1"), "{out}");
    let waited = camfleet_ok(&[
        "wait",
        "--agent",
        &agent_id,
        "--version",
        "1",
        "--timeout",
        "30s",
    ]);
    assert!(
        waited.contains(&format!("{agent_id}: applied version 1")),
        "{waited}"
    );
    let st = wait_status(&agent_id, Duration::from_secs(5), "applied v1", |s| {
        s["applied"]["agent"]["version"] == 1
    });
    assert_eq!(st["last"]["result"], "applied", "{st}");
    assert_eq!(
        st["applied"]["agent"]["hash"].as_str().unwrap().len(),
        64,
        "{st}"
    );

    // A second camera over MQTT, then removed.
    camfleet_ok(&[
        "patch",
        "--agent",
        &agent_id,
        "camera[fleetcfg/yard].source={ kind = \"test_pattern\", width = 320, height = 192, fps = 15 }",
    ]);
    camfleet_ok(&[
        "wait",
        "--agent",
        &agent_id,
        "--version",
        "2",
        "--timeout",
        "30s",
    ]);
    let st = wait_status(&agent_id, Duration::from_secs(5), "two cameras", |s| {
        s["cameras"].as_array().is_some_and(|c| c.len() == 2)
    });
    assert_eq!(st["cameras"][1], "fleetcfg/yard", "{st}");
    std::thread::sleep(Duration::from_secs(3));
    camfleet_ok(&[
        "patch",
        "--agent",
        &agent_id,
        "camera[fleetcfg/yard].remove=true",
    ]);
    camfleet_ok(&[
        "wait",
        "--agent",
        &agent_id,
        "--version",
        "3",
        "--timeout",
        "30s",
    ]);
    let st = wait_status(&agent_id, Duration::from_secs(5), "yard removed", |s| {
        s["applied"]["agent"]["version"] == 3
    });
    assert_eq!(st["cameras"].as_array().unwrap().len(), 1, "{st}");
    let removed_at_us = st["last"]["time_us"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let list = camfleet_ok(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent"] == agent_id.as_str())
        .expect("agent listed");
    assert_eq!(row["status"]["state"], "online", "{row}");

    // SIGKILL: the broker's will marks it offline.
    agent.signal("KILL");
    let st = wait_status(&agent_id, Duration::from_secs(20), "the will", |s| {
        s["state"] == "offline"
    });
    assert_eq!(st["reason"], "connection lost", "{st}");
    drop(agent);

    // Restart with the broker unreachable: the last applied config runs.
    let agent2 = run.spawn(
        "agent-2",
        "camfleet-agent",
        &agent_toml(&run, &agent_id, &site, "mqtt://127.0.0.1:1", ""),
    );
    agent2.wait_log(Duration::from_secs(15), "the persisted config", |l| {
        l.contains("starting on the last applied fleet config")
    });
    std::thread::sleep(Duration::from_secs(5));
    agent2.signal("TERM");
    let out = agent2.wait_success(Duration::from_secs(15));
    let reports: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 1, "only the gate camera runs: {out}");
    assert_eq!(reports[0]["camera"], "fleetcfg/gate");

    let frames = read_topic(&run.services, &run.topic);
    let gate: Vec<&TopicFrame> = frames
        .iter()
        .filter(|f| f.meta.camera.as_str() == "fleetcfg/gate")
        .collect();
    let check = check_stream(&frames, "fleetcfg/gate");
    assert!(check.missing.is_empty(), "gate sequence broke: {check:?}");
    assert_eq!(check.out_of_order, 0, "{check:?}");
    // Epochs in order: the start, the bitrate change, the restart; the
    // yard's coming and going did not restart the gate.
    let mut epochs: Vec<u64> = gate.iter().map(|f| f.meta.epoch).collect();
    epochs.dedup();
    assert_eq!(epochs.len(), 3, "gate epochs {epochs:?}");
    let of = |e: u64| -> Vec<&TopicFrame> {
        gate.iter().filter(|f| f.meta.epoch == e).copied().collect()
    };
    let (before, after, restarted) = (of(epochs[0]), of(epochs[1]), of(epochs[2]));
    assert!(after[0].meta.keyframe, "a new epoch starts with an IDR");
    let (b0, b1, b2) = (kbps(&before), kbps(&after), kbps(&restarted));
    eprintln!("gate bitrate: {b0:.0} kbps at 1000, {b1:.0} kbps at 200 ({} frames), {b2:.0} kbps after the restart ({} frames)", after.len(), restarted.len());
    assert!(
        (180.0..=220.0).contains(&b1),
        "{b1:.0} kbps after the change to 200"
    );
    assert!(
        (180.0..=220.0).contains(&b2),
        "{b2:.0} kbps after the restart on the persisted config"
    );
    // The 640x360 test pattern is simple: at 1000 kbit/s openh264 reaches
    // its lowest quantiser at ~400 kbit/s with CABAC (~650 with CAVLC), so
    // the change goes to 200, which the rate control can hold.
    assert!(b0 > 300.0, "{b0:.0} kbps before the change");

    let yard: Vec<&TopicFrame> = frames
        .iter()
        .filter(|f| f.meta.camera.as_str() == "fleetcfg/yard")
        .collect();
    assert!(yard.len() >= 30, "yard streamed {} frames", yard.len());
    assert!(
        yard.iter().all(|f| f.meta.capture_us <= removed_at_us),
        "yard frames after its removal"
    );
    let ycheck = check_stream(&frames, "fleetcfg/yard");
    assert!(
        ycheck.missing.is_empty() && ycheck.duplicates == 0,
        "{ycheck:?}"
    );
    clear_retained(&topics);
}

#[test]
fn bad_documents_are_rejected_with_a_reason_and_streaming_goes_on() {
    let run = Scenario::new("fleetbad", 1);
    let agent_id = format!("bad-{}", std::process::id());
    let site = format!("badsite-{}", std::process::id());
    let (host, port) = mqtt_plain();
    let url = format!("mqtt://{host}:{port}");
    let desired = format!("camfleet/agents/{agent_id}/desired");
    let topics = [
        desired.clone(),
        format!("camfleet/agents/{agent_id}/status"),
        format!("camfleet/agents/{agent_id}/telemetry"),
    ];
    let keys = run.dir.path().join("ops");
    camfleet_ok(&["keygen", "--out", keys.to_str().unwrap()]);
    let public = std::fs::read_to_string(keys.with_extension("pub")).unwrap();
    let secret = keys.with_extension("key");
    let key = fleet::parse_signing_key(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let trusted = format!("trusted_public_keys = [\"{}\"]", public.trim());
    let mut agent = run.spawn(
        "agent",
        "camfleet-agent",
        &agent_toml(&run, &agent_id, &site, &url, &trusted),
    );
    wait_status(&agent_id, Duration::from_secs(20), "online", |s| {
        s["state"] == "online"
    });

    // A good signed document first (the CLI signs it).
    camfleet_ok(&[
        "patch",
        "--agent",
        &agent_id,
        "--version",
        "5",
        "--key",
        secret.to_str().unwrap(),
        "camera[fleetcfg/gate].encoder.bitrate_kbps=300",
    ]);
    camfleet_ok(&[
        "wait",
        "--agent",
        &agent_id,
        "--version",
        "5",
        "--timeout",
        "30s",
    ]);
    let good_at_us = wait_status(&agent_id, Duration::from_secs(5), "v5", |s| {
        s["applied"]["agent"]["version"] == 5
    })["last"]["time_us"]
        .as_u64()
        .unwrap();

    let signed = |version: u64, config: &str| -> Vec<u8> {
        let mut d = DesiredDoc::new(version, serde_json::from_str(config).unwrap());
        d.sign(&key, Scope::Agent, &agent_id);
        d.to_json().into_bytes()
    };
    let other_key = ed25519_signing_key_from_seed([9; 32]);
    let by_other = {
        let mut d = DesiredDoc::new(
            7,
            serde_json::from_str(r#"{"spool":{"max_age_s":60}}"#).unwrap(),
        );
        d.sign(&other_key, Scope::Agent, &agent_id);
        d.to_json().into_bytes()
    };
    let gate = r#""id":"fleetcfg/gate""#;
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "not JSON or TOML",
            b"bitrate = fast, please".to_vec(),
            "not a JSON document".into(),
        ),
        (
            "wrong type in the envelope",
            br#"{"version":"6","config":{}}"#.to_vec(),
            "invalid type".into(),
        ),
        (
            "wrong type in the config",
            signed(
                6,
                &format!(r#"{{"camera":[{{{gate},"encoder":{{"bitrate_kbps":"fast"}}}}]}}"#),
            ),
            "camera[0].encoder.bitrate_kbps".into(),
        ),
        (
            "unknown key",
            signed(
                6,
                &format!(r#"{{"camera":[{{{gate},"encoder":{{"bitrat_kbps":900}}}}]}}"#),
            ),
            "unknown field `bitrat_kbps`".into(),
        ),
        (
            "out of range",
            signed(
                6,
                &format!(r#"{{"camera":[{{{gate},"encoder":{{"bitrate_kbps":5}}}}]}}"#),
            ),
            "encoder.bitrate_kbps: must be 50..=100000".into(),
        ),
        (
            "a key the fleet may not set",
            signed(6, r#"{"data_dir":"/tmp/elsewhere"}"#),
            "config.data_dir: cannot be set over MQTT".into(),
        ),
        (
            "10 MB payload",
            vec![b'x'; 10 << 20],
            "payload is 10485760 bytes".into(),
        ),
        (
            "older version",
            signed(3, r#"{"spool":{"max_age_s":60}}"#),
            "version: 3 is older than the applied 5".into(),
        ),
        (
            "signed by an untrusted key",
            by_other,
            "signature: not made by".into(),
        ),
        (
            "missing signature",
            br#"{"version":8,"config":{"spool":{"max_age_s":60}}}"#.to_vec(),
            "signature: missing".into(),
        ),
        (
            "camera device that does not exist",
            signed(
                9,
                r#"{"camera":[{"id":"fleetcfg/door","source":{"kind":"v4l2","device":"/dev/video-camfleet-none","width":640,"height":480}}]}"#,
            ),
            "camera[1] (fleetcfg/door).source.device: /dev/video-camfleet-none does not exist"
                .into(),
        ),
    ];
    let first_bad_us = now_us();
    let mut seen_us = good_at_us;
    for (what, payload, want) in &cases {
        publish_retained(&desired, payload, run.dir.path());
        let st = wait_status(&agent_id, Duration::from_secs(20), what, |s| {
            s["last_rejection"]["time_us"]
                .as_u64()
                .is_some_and(|t| t > seen_us)
        });
        let reason = st["last_rejection"]["reason"].as_str().unwrap_or_default();
        eprintln!("{what}: {reason}");
        assert!(
            reason.contains(want.as_str()),
            "{what}: {reason:?} lacks {want:?}"
        );
        assert_eq!(st["last"]["result"], "rejected", "{what}: {st}");
        assert_eq!(st["applied"]["agent"]["version"], 5, "{what}: {st}");
        assert_eq!(st["state"], "online", "{what}: {st}");
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "{what}: agent exited"
        );
        seen_us = st["last_rejection"]["time_us"].as_u64().unwrap();
    }

    // `camfleet wait` names the agent that rejected a version (a device
    // only the agent can know is missing; the CLI's own checks pass).
    let bad = run.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[camera]]\nid = \"fleetcfg/door\"\nsource = { kind = \"v4l2\", device = \"/dev/video-camfleet-none\", width = 640, height = 480 }\n",
    )
    .unwrap();
    camfleet_ok(&[
        "set",
        "--agent",
        &agent_id,
        "--version",
        "20",
        "--key",
        secret.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let out = camfleet(&[
        "wait",
        "--agent",
        &agent_id,
        "--version",
        "20",
        "--timeout",
        "20s",
    ]);
    assert!(
        !out.status.success(),
        "wait succeeded on a rejected version"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{agent_id}: REJECTED version 20"))
            && text.contains("does not exist"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&agent_id));
    let last_bad_us = now_us();
    std::thread::sleep(Duration::from_secs(2));
    agent.signal("TERM");
    let out = agent.wait_success(Duration::from_secs(15));
    assert_eq!(
        out.lines().count(),
        2,
        "two runs of gate (start, v5): {out}"
    );

    // Streaming went on through every rejection: one epoch from before the
    // first bad document to after the last, no gap, nothing out of order.
    let frames = read_topic(&run.services, &run.topic);
    let check = check_stream(&frames, "fleetcfg/gate");
    assert!(
        check.missing.is_empty() && check.duplicates == 0,
        "{check:?}"
    );
    assert_eq!(check.out_of_order, 0, "{check:?}");
    let last_epoch = frames.last().unwrap().meta.epoch;
    let span: Vec<u64> = frames
        .iter()
        .filter(|f| f.meta.epoch == last_epoch)
        .map(|f| f.meta.capture_us)
        .collect();
    assert!(
        span[0] < first_bad_us && *span.last().unwrap() > last_bad_us,
        "the v5 epoch covers the bad documents"
    );
    clear_retained(&topics);
}

fn ed25519_signing_key_from_seed(seed: [u8; 32]) -> ed25519_dalek::SigningKey {
    fleet::parse_signing_key(&fleet::encode_key(&seed)).unwrap()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The site moves its agents from the plaintext listener to the SASL_SSL
/// one (new address, TLS, SCRAM credentials) and changes the spool budget
/// while they stream: the agent swaps its Kafka client live, the spool takes
/// the new budget, and no frame is lost across the swap.
#[test]
fn kafka_address_credentials_and_spool_budget_change_live_from_the_site_document() {
    let run = Scenario::new("fleetkafka", 1);
    let sec = run.services.secure();
    let agent_id = format!("kafka-{}", std::process::id());
    let site = format!("ksite-{}", std::process::id());
    let topics = [
        format!("camfleet/sites/{site}/desired"),
        format!("camfleet/agents/{agent_id}/status"),
        format!("camfleet/agents/{agent_id}/telemetry"),
    ];
    let agent = start_agent(&run, &agent_id, &site);
    let plaintext_frames = read_topic(&run.services, &run.topic).len();
    assert!(plaintext_frames > 0, "nothing streamed over plaintext");

    let doc = run.dir.path().join("site.toml");
    std::fs::write(
        &doc,
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
security_protocol = "sasl_ssl"
[kafka.tls]
ca_file = "{ca}"
[kafka.sasl]
mechanism = "scram_sha_512"
username = "{user}"
password_file = "{password}"
[spool]
max_bytes = 123456789
"#,
            bootstrap = sec.bootstrap,
            ca = sec.ca_file.display(),
            user = sec.user,
            password = sec.password_file.display(),
        ),
    )
    .unwrap();
    camfleet_ok(&["set", "--site", &site, doc.to_str().unwrap()]);
    let waited = camfleet_ok(&[
        "wait",
        "--site",
        &site,
        "--version",
        "1",
        "--timeout",
        "30s",
    ]);
    assert!(waited.contains(&agent_id), "{waited}");
    let st = wait_status(&agent_id, Duration::from_secs(5), "site v1 applied", |s| {
        s["applied"]["site"]["version"] == 1
    });
    assert_eq!(st["last"]["result"], "applied", "{st}");
    let swapped_at_us = st["last"]["time_us"].as_u64().unwrap();

    // Streaming goes on through the secure listener; telemetry says the new
    // client is connected.
    std::thread::sleep(Duration::from_secs(4));
    let telemetry = retained(&topics[2]);
    assert_eq!(telemetry["kafka"]["state"], "ok", "{telemetry}");
    // The running spool's limits, through its control socket.
    let status = Command::new(binary("camfleet-agent"))
        .args(["spool", "status", "--json", "--config"])
        .arg(run.dir.path().join("agent.toml"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["agent_running"], true, "{status}");
    assert_eq!(status["limits"]["max_bytes"], 123456789, "{status}");
    agent.signal("TERM");
    let out = agent.wait_success(Duration::from_secs(20));
    assert!(!out.contains(&sec.password()), "the password leaked: {out}");

    let frames = read_topic(&run.services, &run.topic);
    let check = check_stream(&frames, "fleetcfg/gate");
    assert!(check.missing.is_empty(), "gap across the swap: {check:?}");
    assert_eq!(check.duplicates, 0, "{check:?}");
    let after: Vec<&TopicFrame> = frames
        .iter()
        .filter(|f| f.meta.capture_us > swapped_at_us + 1_000_000)
        .collect();
    assert!(
        after.len() >= 60,
        "only {} frames after the swap to SASL_SSL",
        after.len()
    );
    let mut epochs: Vec<u64> = frames.iter().map(|f| f.meta.epoch).collect();
    epochs.dedup();
    assert_eq!(epochs.len(), 2, "one restart for the swap: {epochs:?}");
    clear_retained(&topics);
}
