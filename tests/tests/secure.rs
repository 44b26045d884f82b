//! The agent (and the collector) against the broker's SASL_SSL listener: TLS
//! with the test CA plus SCRAM-SHA-512 (scripts/services, docs/security.md).
//! Streams arrive; a wrong password, an untrusted CA and a plaintext client on
//! the secure port each fail with a message naming the cause, and nothing
//! reaches the topic: the frames wait in the spool. Secrets never show in
//! `validate` output or logs. The reading side of each check uses PLAINTEXT.

use camfleet_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn camera(id: &str, frames: u64, paced: bool) -> PatternCamera<'_> {
    PatternCamera {
        id,
        width: 320,
        height: 240,
        fps: 30,
        frames,
        paced,
    }
}

/// `[kafka]` lines for SASL_SSL with `ca` and one password setting.
fn sasl_ssl(sec: &SecureKafka, ca: &Path, password: &str) -> String {
    format!(
        r#"security_protocol = "sasl_ssl"
[kafka.tls]
ca_file = "{ca}"
[kafka.sasl]
mechanism = "scram_sha_512"
username = "{user}"
{password}
"#,
        ca = ca.display(),
        user = sec.user,
    )
}

fn password_file(path: &Path) -> String {
    format!("password_file = \"{}\"", path.display())
}

/// An agent config for the scenario's topic over `bootstrap`.
fn config(run: &Scenario, cam: &PatternCamera<'_>, bootstrap: &str, kafka: &str) -> String {
    let c = run.agent_config(cam, kafka, "");
    let plain = format!("bootstrap_servers = \"{}\"", run.services.kafka);
    assert!(c.contains(&plain));
    c.replace(&plain, &format!("bootstrap_servers = \"{bootstrap}\""))
}

/// `camfleet-agent validate --check-kafka`: (success, stdout + stderr).
fn validate(run: &Scenario, name: &str, config: &str) -> (bool, String) {
    let file = run.dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    let out = Command::new(binary("camfleet-agent"))
        .args(["validate", "--check-kafka", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info,librdkafka=warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs an agent that cannot get through (`kafka` is wrong in some way) for
/// 90 paced frames and checks the failure is reported once, named by
/// `expect`, every frame went to the spool, and the topic is empty.
fn refused_run(run: &Scenario, id: &str, bootstrap: &str, kafka: &str, expect: &[&str]) {
    let cam = camera(id, 90, true);
    let agent = run.spawn(
        &format!("agent-{}", id.replace('/', "-")),
        "camfleet-agent",
        &config(run, &cam, bootstrap, kafka),
    );
    let log_path = agent.log.clone();
    let summary = agent.wait_summary(Duration::from_secs(60));
    let log = std::fs::read_to_string(log_path).unwrap();
    let u = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(u("frames_acked"), 0, "{summary}");
    assert_eq!(u("frames_failed"), 0, "{summary}");
    assert_eq!(u("frames_spooled"), 90, "nothing lost: {summary}\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains(expect[0]))
        .collect();
    // Once per distinct cause, not once per reconnect (about 1 per second).
    assert_eq!(errors.len(), 1, "{log}");
    for e in expect {
        assert!(errors[0].contains(e), "{e:?} not in {}", errors[0]);
    }
    assert!(
        read_topic(&run.services, &run.topic).is_empty(),
        "records reached the topic"
    );
}

#[test]
fn secure_the_agent_streams_over_tls_and_scram_and_never_shows_the_password() {
    let run = Scenario::new("secure-stream", 1);
    let sec = run.services.secure();
    let password = sec.password();
    assert!(password.len() >= 16, "a generated password");
    let n = 60;
    let cam = camera("lab/secure", n, false);

    // The password inline in agent.toml: validate names the settings only.
    let inline = config(
        &run,
        &cam,
        &sec.bootstrap,
        &sasl_ssl(&sec, &sec.ca_file, &format!("password = \"{password}\"")),
    );
    let (ok, out) = validate(&run, "inline", &inline);
    assert!(ok, "{out}");
    assert!(out.contains("ok kafka security sasl_ssl"), "{out}");
    assert!(
        out.contains("SCRAM-SHA-512 as camfleet-agent (password in the config)"),
        "{out}"
    );
    assert!(
        !out.contains(&password),
        "validate printed the password:\n{out}"
    );

    // The password from a file, at debug log level.
    let kafka = sasl_ssl(&sec, &sec.ca_file, &password_file(&sec.password_file));
    let file = run.dir.path().join("agent.toml");
    std::fs::write(&file, config(&run, &cam, &sec.bootstrap, &kafka)).unwrap();
    let out = Command::new(binary("camfleet-agent"))
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the password appeared in the agent's output"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(delivered(&summary), n, "{summary}");
    assert_eq!(summary["frames_failed"], 0, "{summary}");

    let frames = read_topic(&run.services, &run.topic);
    let c = check_stream(&frames, "lab/secure");
    assert_eq!(
        (c.first, c.last, c.distinct),
        (Some(0), Some(n - 1), n),
        "{c:?}"
    );
    assert!(
        c.missing.is_empty() && c.duplicates == 0 && c.out_of_order == 0,
        "{c:?}"
    );
}

#[test]
fn secure_a_wrong_password_fails_clearly_spools_everything_and_a_fixed_one_drains() {
    let run = Scenario::new("secure-wrong-pw", 1);
    let sec = run.services.secure();
    let wrong = run.dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let kafka = sasl_ssl(&sec, &sec.ca_file, &password_file(&wrong));
    let id = "lab/wrong-pw";

    let (ok, out) = validate(
        &run,
        "wrong",
        &config(&run, &camera(id, 1, false), &sec.bootstrap, &kafka),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("error: Kafka client setup failed: metadata for"),
        "{out}"
    );
    assert!(out.contains("Kafka authentication failed"), "{out}");
    assert!(
        out.contains("invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "{out}"
    );
    assert!(!out.contains("not-the-password"), "{out}");

    refused_run(
        &run,
        id,
        &sec.bootstrap,
        &kafka,
        &["Kafka authentication failed", "SASL authentication error"],
    );

    // The right password: the 90 spooled frames drain, then 30 new ones.
    let kafka = sasl_ssl(&sec, &sec.ca_file, &password_file(&sec.password_file));
    let cam = camera(id, 30, false);
    run.spawn(
        "agent-fixed",
        "camfleet-agent",
        &config(&run, &cam, &sec.bootstrap, &kafka),
    )
    .wait_summary(Duration::from_secs(60));
    let c = check_stream(&read_topic(&run.services, &run.topic), id);
    assert_eq!(
        (c.first, c.last, c.distinct),
        (Some(0), Some(119), 120),
        "{c:?}"
    );
    assert!(
        c.missing.is_empty() && c.duplicates == 0 && c.out_of_order == 0,
        "{c:?}"
    );
}

#[test]
fn secure_an_untrusted_ca_fails_clearly_and_nothing_reaches_the_topic() {
    let run = Scenario::new("secure-other-ca", 1);
    let sec = run.services.secure();
    let kafka = sasl_ssl(&sec, &sec.other_ca_file, &password_file(&sec.password_file));
    let id = "lab/other-ca";
    let (ok, out) = validate(
        &run,
        "other-ca",
        &config(&run, &camera(id, 1, false), &sec.bootstrap, &kafka),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("TLS handshake with the broker failed: its certificate is not trusted"),
        "{out}"
    );
    assert!(out.contains("certificate verify failed"), "{out}");
    refused_run(
        &run,
        id,
        &sec.bootstrap,
        &kafka,
        &["certificate is not trusted", "certificate verify failed"],
    );
}

#[test]
fn secure_plaintext_to_the_secure_port_fails_clearly_and_nothing_reaches_the_topic() {
    let run = Scenario::new("secure-plaintext", 1);
    let sec = run.services.secure();
    let id = "lab/plaintext";
    let (ok, out) = validate(
        &run,
        "plaintext",
        &config(&run, &camera(id, 1, false), &sec.bootstrap, ""),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("likely a security protocol mismatch"), "{out}");
    refused_run(
        &run,
        id,
        &sec.bootstrap,
        "",
        &["likely a security protocol mismatch"],
    );
}

#[test]
fn secure_the_collector_archives_over_sasl_ssl() {
    let run = Scenario::new("secure-collector", 1);
    let sec = run.services.secure();
    let n = 60;
    let summary = run
        .agent(&camera("lab/collected", n, false), "")
        .wait_summary(Duration::from_secs(60));
    assert_eq!(delivered(&summary), n, "{summary}");
    let root = run.dir.path().join("archive");
    let collector = run.collector_config(root.to_str().unwrap());
    let plain = format!("bootstrap_servers = \"{}\"", run.services.kafka);
    let secure = format!(
        "bootstrap_servers = \"{}\"\nsecurity_protocol = \"sasl_ssl\"",
        sec.bootstrap
    );
    let tables = format!(
        "[kafka.tls]\nca_file = \"{}\"\n[kafka.sasl]\nusername = \"{}\"\npassword_file = \"{}\"\n[archive]",
        sec.ca_file.display(),
        sec.collector_user,
        sec.collector_password_file.display()
    );
    let collector = collector
        .replace(&plain, &secure)
        .replace("[archive]", &tables);
    assert!(collector.contains(&sec.bootstrap) && collector.contains("[kafka.sasl]"));
    let proc = run.spawn("collector", "camfleet-collector", &collector);
    wait_until(Duration::from_secs(60), "all frames archived", || {
        segments_under(&root)
            .iter()
            .map(|s| ffprobe_frames(s).3)
            .sum::<u64>()
            == n
    });
    proc.signal("TERM");
    let summary = proc.wait_summary(Duration::from_secs(15));
    assert_eq!(summary["frames_archived"], n, "{summary}");
}

#[test]
fn secure_tls_to_the_plaintext_port_fails_clearly() {
    let run = Scenario::new("secure-tls-to-plain", 1);
    let sec = run.services.secure();
    let kafka = sasl_ssl(&sec, &sec.ca_file, &password_file(&sec.password_file));
    let plain = run.services.kafka.clone();
    let (ok, out) = validate(
        &run,
        "tls-to-plain",
        &config(&run, &camera("lab/tls-to-plain", 1, false), &plain, &kafka),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("TLS handshake with the broker failed: the port does not speak TLS"),
        "{out}"
    );
}
