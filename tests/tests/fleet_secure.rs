//! The fleet on Mosquitto's secure listener (scripts/services: TLS with the
//! test CA, passwords made with mosquitto_passwd, ACLs): the agent connects
//! over TLS with its password, ops publish through `camfleet` over TLS and
//! the agent applies its own and its site's documents; the broker's ACLs
//! keep an agent from writing another agent's status, its own desired
//! config or its site's, checked with the Mosquitto client tools.

use camfleet_tests::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Secure {
    url: String,
    port: String,
    ca: String,
    secrets: String,
}

impl Secure {
    fn get() -> Self {
        let url = std::env::var("MQTT_TLS_URL").expect("MQTT_TLS_URL: source .services/env");
        let port = url.rsplit_once(':').unwrap().1.to_string();
        Self {
            url,
            port,
            ca: std::env::var("MQTT_CA_FILE").unwrap(),
            secrets: std::env::var("MQTT_PASSWORD_DIR").unwrap(),
        }
    }

    fn password_file(&self, user: &str) -> String {
        format!("{}/mqtt-{user}.password", self.secrets)
    }

    fn login(&self, user: &str) -> Vec<String> {
        let password = std::fs::read_to_string(self.password_file(user)).unwrap();
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port,
            "--cafile",
            &self.ca,
            "-u",
            user,
            "-P",
            password.trim(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The retained message of `topic` as `user` reads it (raw text).
    fn retained(&self, user: &str, topic: &str) -> String {
        let out = Command::new("mosquitto_sub")
            .args(self.login(user))
            .args(["-t", topic, "-C", "1", "-W", "3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn publish(&self, user: &str, topic: &str, payload: &str) -> Output {
        Command::new("mosquitto_pub")
            .args(self.login(user))
            .args(["-r", "-q", "1", "-t", topic, "-m", payload])
            .output()
            .unwrap()
    }

    fn clear(&self, topics: &[&str]) {
        for t in topics {
            let _ = Command::new("mosquitto_pub")
                .args(self.login("camfleet-ops"))
                .args(["-r", "-n", "-t", t])
                .status();
        }
    }

    fn camfleet(&self, args: &[&str]) -> Output {
        logged_output(
            Command::new(binary("camfleet"))
                .args([
                    "--url",
                    &self.url,
                    "--ca-file",
                    &self.ca,
                    "--username",
                    "camfleet-ops",
                ])
                .args(["--password-file", &self.password_file("camfleet-ops")])
                .args(args),
            &format!("camfleet {args:?}"),
        )
    }
}

#[test]
fn agents_on_the_tls_listener_apply_ops_config_and_cannot_write_each_others_topics() {
    let run = Scenario::new("fleetsec", 1);
    let s = Secure::get();
    let topics = [
        "camfleet/agents/agent-a/status",
        "camfleet/agents/agent-a/telemetry",
        "camfleet/agents/agent-a/desired",
        "camfleet/agents/agent-b/status",
        "camfleet/sites/site-a/desired",
    ];
    s.clear(&topics);
    let config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[mqtt]
url = "{url}"
ca_file = "{ca}"
agent_id = "agent-a"
site = "site-a"
username = "agent-a"
password_file = "{password}"
telemetry_period_s = 1
keep_alive_s = 5
[[camera]]
id = "fleetsec/gate"
source = {{ kind = "test_pattern", width = 320, height = 192, fps = 15 }}
encoder = {{ bitrate_kbps = 300, keyframe_interval_frames = 30 }}
"#,
        data = run.dir.path().join("agent-data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
        url = s.url,
        ca = s.ca,
        password = s.password_file("agent-a"),
    );
    let agent = run.spawn("agent", "camfleet-agent", &config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s
        .retained("camfleet-ops", "camfleet/agents/agent-a/status")
        .contains("\"online\"")
    {
        assert!(
            Instant::now() < deadline,
            "agent-a not online over TLS; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Ops, over TLS with a password: the site's and the agent's documents.
    assert!(s
        .camfleet(&["patch", "--site", "site-a", "spool.max_age_s=3600"])
        .status
        .success());
    assert!(s
        .camfleet(&[
            "wait",
            "--site",
            "site-a",
            "--version",
            "1",
            "--timeout",
            "30s"
        ])
        .status
        .success());
    assert!(s
        .camfleet(&[
            "patch",
            "--agent",
            "agent-a",
            "camera[fleetsec/gate].encoder.bitrate_kbps=250"
        ])
        .status
        .success());
    assert!(s
        .camfleet(&[
            "wait",
            "--agent",
            "agent-a",
            "--version",
            "1",
            "--timeout",
            "30s"
        ])
        .status
        .success());

    // ACLs: agent-b may write its own status (the control) ...
    assert!(s
        .publish(
            "agent-b",
            "camfleet/agents/agent-b/status",
            "{\"state\":\"probe\"}"
        )
        .status
        .success());
    assert_eq!(
        s.retained("camfleet-ops", "camfleet/agents/agent-b/status"),
        "{\"state\":\"probe\"}"
    );
    // ... agent-a may not: nor agent-b's status, nor its own or its site's config.
    s.publish(
        "agent-a",
        "camfleet/agents/agent-b/status",
        "{\"state\":\"online\",\"forged\":true}",
    );
    s.publish(
        "agent-a",
        "camfleet/agents/agent-a/desired",
        "{\"version\":99,\"config\":{}}",
    );
    s.publish(
        "agent-a",
        "camfleet/sites/site-a/desired",
        "{\"version\":99,\"config\":{}}",
    );
    assert_eq!(
        s.retained("camfleet-ops", "camfleet/agents/agent-b/status"),
        "{\"state\":\"probe\"}",
        "agent-a overwrote agent-b's status"
    );
    for topic in [
        "camfleet/agents/agent-a/desired",
        "camfleet/sites/site-a/desired",
    ] {
        let doc: serde_json::Value =
            serde_json::from_str(&s.retained("camfleet-ops", topic)).unwrap();
        assert_eq!(
            doc["version"], 1,
            "{topic} was overwritten by agent-a: {doc}"
        );
    }
    // Its status still shows what ops applied, not a forged document.
    let st: serde_json::Value =
        serde_json::from_str(&s.retained("camfleet-ops", "camfleet/agents/agent-a/status"))
            .unwrap();
    assert_eq!(st["applied"]["agent"]["version"], 1, "{st}");
    assert_eq!(st["applied"]["site"]["version"], 1, "{st}");
    assert!(st["last_rejection"].is_null(), "{st}");
    // No password, no entry.
    let anonymous = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.port,
            "--cafile",
            &s.ca,
            "-t",
            "camfleet/#",
            "-C",
            "1",
            "-W",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "anonymous client accepted on the secure listener"
    );

    agent.signal("TERM");
    agent.wait_success(Duration::from_secs(15));
    assert!(s
        .retained("camfleet-ops", "camfleet/agents/agent-a/status")
        .contains("\"stopped\""));
    s.clear(&topics);
}
