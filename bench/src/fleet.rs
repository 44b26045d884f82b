//! `fleet`: how long from `camfleet set` to "applied" on the agents' status,
//! for 1 and for N agents of one site, and the MQTT bytes of telemetry per
//! agent per hour.
//!
//! * Simulated agents run in this process, each one the agent's real fleet
//!   link (`camfleet_agent::fleet::Fleet`: its own MQTT connection, parse,
//!   signature check, version, merge + validation, persisting applied.json
//!   with fsync, status) with the camera side replaced by a task that
//!   accepts every config at once. So the numbers are the fleet path, not
//!   camera restarts (a camera restart is a few ms plus the new encoder).
//! * The peer, on the same broker and with the same `camfleet set` and the
//!   same observer: echo clients that answer each document with a status
//!   naming its version, parsing nothing else. That is the floor of two MQTT
//!   hops plus one JSON parse; the ratio is what our checks cost on top.
//! * Time is taken from the start of `camfleet set` (the CLI connects, reads
//!   the retained document for the next version, checks, publishes) and from
//!   the moment the broker delivered the document to the observer.
//! * Telemetry: a real `camfleet-agent` with 1 and 4 test-pattern cameras,
//!   telemetry every second for a few seconds; the observer adds up the
//!   MQTT PUBLISH packets (fixed header, topic, payload) and scales to an
//!   hour at 30 s and 10 s periods.

use crate::kafka::Kafka;
use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_agent::fleet::applied::{Applied, ConfigSource};
use camfleet_agent::fleet::{ApplyRequest, Fleet, FleetDeps};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub struct Args {
    pub agents: Vec<usize>,
    pub rounds: u32,
    pub telemetry_seconds: u64,
    pub camfleet: PathBuf,
    pub agent: PathBuf,
    pub work: PathBuf,
}

fn mqtt_url() -> anyhow::Result<(String, String, u16)> {
    let url = std::env::var("MQTT_URL").context("MQTT_URL: run scripts/bench")?;
    let rest = url.strip_prefix("mqtt://").context("MQTT_URL")?;
    let (h, p) = rest.rsplit_once(':').context("MQTT_URL")?;
    Ok((url.clone(), h.to_string(), p.parse()?))
}

/// What the observer saw: per agent, when each site version was applied.
#[derive(Default)]
struct Seen {
    applied: HashMap<(String, u64), Instant>,
    doc_at: HashMap<u64, Instant>,
    telemetry_bytes: u64,
    telemetry_msgs: u64,
}

/// Subscribes to statuses, telemetry and the site document; records times.
async fn observer(
    host: &str,
    port: u16,
    site: &str,
) -> anyhow::Result<(AsyncClient, Arc<Mutex<Seen>>)> {
    let mut o = MqttOptions::new(
        format!("bench-observer-{}-{site}", std::process::id()),
        host,
        port,
    );
    o.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 1024);
    client
        .subscribe("camfleet/agents/+/status", QoS::AtMostOnce)
        .await?;
    client
        .subscribe("camfleet/agents/+/telemetry", QoS::AtMostOnce)
        .await?;
    client
        .subscribe(format!("camfleet/sites/{site}/desired"), QoS::AtMostOnce)
        .await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            let Event::Incoming(Packet::Publish(p)) = ev else {
                continue;
            };
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let mut s = s.lock().unwrap();
            if p.topic.ends_with("/telemetry") {
                // PUBLISH QoS 0: fixed header (1 + remaining-length bytes),
                // topic length (2), topic, payload.
                let rest = 2 + p.topic.len() + p.payload.len();
                let len_bytes = if rest < 128 {
                    1
                } else if rest < 16384 {
                    2
                } else {
                    3
                };
                s.telemetry_bytes += (1 + len_bytes + rest) as u64;
                s.telemetry_msgs += 1;
            } else if p.topic.ends_with("/desired") {
                if let Some(ver) = v["version"].as_u64() {
                    s.doc_at.entry(ver).or_insert(now);
                }
            } else if let Some(ver) = v["applied"]["site"]["version"].as_u64() {
                let agent = p.topic.split('/').nth(2).unwrap_or("?").to_string();
                s.applied.entry((agent, ver)).or_insert(now);
            }
        }
    });
    Ok((client, seen))
}

/// The agent's fleet link with an instant "camera side".
fn simulated(
    url: &str,
    site: &str,
    name: &str,
    dir: &Path,
) -> anyhow::Result<(Fleet, watch::Sender<u64>)> {
    let data = dir.join(name);
    let local = format!(
        "data_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n[mqtt]\nurl = \"{url}\"\nagent_id = \"{name}\"\nsite = \"{site}\"\ntelemetry_period_s = 3600\nkeep_alive_s = 60\n[[camera]]\nid = \"bench/cam\"\nsource = {{ kind = \"test_pattern\", width = 64, height = 64 }}\n",
        data.display()
    );
    let cfg = camfleet_shared::config::AgentConfig::from_toml(&local)?;
    let (tx, mut rx) = mpsc::channel::<ApplyRequest>(1);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let _ = req.reply.send(Ok("simulated".into()));
        }
    });
    let (period_tx, period_rx) = watch::channel(3600);
    let fleet = Fleet::start(
        cfg.mqtt.as_ref().expect("mqtt"),
        FleetDeps {
            local_toml: local,
            applied: Applied::default(),
            source: ConfigSource::Local,
            data_dir: data,
            cameras: Arc::new(Mutex::new(Vec::new())),
            spool: Arc::new(|| serde_json::json!({})),
            kafka: Arc::new(|| serde_json::json!({})),
            apply: tx,
            telemetry_period_s: period_rx,
        },
    )?;
    Ok((fleet, period_tx))
}

/// The peer: answers each document with a status naming its version.
async fn echo(
    host: &str,
    port: u16,
    site: &str,
    name: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut o = MqttOptions::new(format!("bench-echo-{name}"), host, port);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(o, 16);
    let topic = format!("camfleet/sites/{site}/desired");
    let status = format!("camfleet/agents/{name}/status");
    let site = site.to_string();
    Ok(tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = client.try_subscribe(&topic, QoS::AtLeastOnce);
                    let online = serde_json::json!({"state": "online", "site": site}).to_string();
                    let _ = client.try_publish(&status, QoS::AtLeastOnce, true, online);
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(ver) = v["version"].as_u64() {
                        let st = serde_json::json!({"state": "online", "site": site,
                            "applied": {"site": {"version": ver}}})
                        .to_string();
                        let _ = client.try_publish(&status, QoS::AtLeastOnce, true, st);
                    }
                }
                _ => {}
            }
        }
    }))
}

fn clear(host: &str, port: u16, topics: &[String]) {
    for t in topics {
        let _ = std::process::Command::new("mosquitto_pub")
            .args(["-h", host, "-p", &port.to_string(), "-r", "-n", "-t", t])
            .status();
    }
}

struct Timing {
    /// Per agent, from the start of `camfleet set`, ms.
    from_set: Vec<f64>,
    /// Per agent, from the broker's delivery of the document, ms.
    from_doc: Vec<f64>,
    /// Until the last agent, per round, from the start of `camfleet set`.
    all: Vec<f64>,
}

async fn measure(args: &Args, n: usize, peer: bool) -> anyhow::Result<Timing> {
    let (url, host, port) = mqtt_url()?;
    let site = format!(
        "bench{}{}{}",
        std::process::id(),
        if peer { "e" } else { "c" },
        n
    );
    let names: Vec<String> = (0..n).map(|i| format!("{site}-a{i}")).collect();
    let dir = args.work.join("fleet").join(&site);
    std::fs::create_dir_all(&dir)?;
    let (observer_client, seen) = observer(&host, port, &site).await?;
    let mut fleets = Vec::new();
    let mut echoes = Vec::new();
    for name in &names {
        if peer {
            echoes.push(echo(&host, port, &site, name).await?);
        } else {
            fleets.push(simulated(&url, &site, name, &dir)?);
        }
    }
    // Let every connection and subscription settle.
    tokio::time::sleep(Duration::from_millis(500 + 5 * n as u64)).await;
    let file = dir.join("site.toml");
    let mut timing = Timing {
        from_set: vec![],
        from_doc: vec![],
        all: vec![],
    };
    for round in 1..=args.rounds as u64 {
        std::fs::write(
            &file,
            format!(
                "[[camera]]\nid = \"bench/cam\"\nencoder = {{ bitrate_kbps = {} }}\n",
                1000 + round
            ),
        )?;
        let t0 = Instant::now();
        let out = tokio::process::Command::new(&args.camfleet)
            .args([
                "--url",
                &url,
                "set",
                "--site",
                &site,
                "--version",
                &round.to_string(),
            ])
            .arg(&file)
            .output()
            .await?;
        if !out.status.success() {
            bail!("camfleet set: {}", String::from_utf8_lossy(&out.stderr));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = {
                let s = seen.lock().unwrap();
                names
                    .iter()
                    .filter(|a| s.applied.contains_key(&((*a).clone(), round)))
                    .count()
            };
            if done == n {
                break;
            }
            if Instant::now() > deadline {
                bail!("round {round}: {done} of {n} agents applied within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = seen.lock().unwrap();
        let doc_at = *s
            .doc_at
            .get(&round)
            .context("observer missed the document")?;
        let mut last: f64 = 0.0;
        for a in &names {
            let at = s.applied[&(a.clone(), round)];
            let ms = at.duration_since(t0).as_secs_f64() * 1e3;
            last = last.max(ms);
            timing.from_set.push(ms);
            timing
                .from_doc
                .push(at.saturating_duration_since(doc_at).as_secs_f64() * 1e3);
        }
        timing.all.push(last);
    }
    for (f, _period) in fleets {
        f.stop().await;
    }
    for e in echoes {
        e.abort();
    }
    let _ = observer_client.disconnect().await;
    let mut topics = vec![format!("camfleet/sites/{site}/desired")];
    topics.extend(names.iter().map(|a| format!("camfleet/agents/{a}/status")));
    clear(&host, port, &topics);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(timing)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn telemetry_bytes(kafka: &Kafka, args: &Args, cameras: u32) -> anyhow::Result<f64> {
    let (url, host, port) = mqtt_url()?;
    let topic = kafka.fresh_topic("fleet-telemetry").await?;
    let name = format!("benchtel{}c{cameras}", std::process::id());
    let dir = args.work.join("fleet").join(&name);
    std::fs::create_dir_all(&dir)?;
    let mut config = format!(
        "data_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[http]\nlisten = \"\"\n[mqtt]\nurl = \"{url}\"\nagent_id = \"{name}\"\ntelemetry_period_s = 1\n",
        dir.join("data").display(),
        kafka.bootstrap
    );
    for i in 0..cameras {
        config += &format!(
            "[[camera]]\nid = \"bench/tel-{i}\"\nsource = {{ kind = \"test_pattern\", width = 320, height = 192, fps = 15 }}\nencoder = {{ bitrate_kbps = 300 }}\n"
        );
    }
    let file = dir.join("agent.toml");
    std::fs::write(&file, config)?;
    let (observer_client, seen) = observer(&host, port, &name).await?;
    let mut child = std::process::Command::new(&args.agent)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()?;
    // Skip the first records (cameras starting), then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b0, m0) = {
        let s = seen.lock().unwrap();
        (s.telemetry_bytes, s.telemetry_msgs)
    };
    tokio::time::sleep(Duration::from_secs(args.telemetry_seconds)).await;
    let (b1, m1) = {
        let s = seen.lock().unwrap();
        (s.telemetry_bytes, s.telemetry_msgs)
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = observer_client.disconnect().await;
    clear(
        &host,
        port,
        &[
            format!("camfleet/agents/{name}/status"),
            format!("camfleet/agents/{name}/telemetry"),
        ],
    );
    kafka.delete_topic(&topic).await?;
    let _ = std::fs::remove_dir_all(&dir);
    if m1 <= m0 {
        bail!("no telemetry seen from the agent");
    }
    Ok((b1 - b0) as f64 / (m1 - m0) as f64)
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let mut t = Table::new(
        "fleet: camfleet set -> applied on every agent of a site (same broker, same CLI and observer)",
        &["agents", "impl", "set->applied p50 ms", "p99 ms", "all applied ms", "broker->applied p50 ms", "p50 vs echo"],
    );
    for &n in &args.agents {
        let mut ours = measure(&args, n, false).await?;
        let mut peer = measure(&args, n, true).await?;
        let (o50, p50) = (pct(&mut ours.from_set, 0.5), pct(&mut peer.from_set, 0.5));
        for (name, tm, ratio) in [
            ("camfleet agent link", &mut ours, o50 / p50),
            ("echo (peer)", &mut peer, 1.0),
        ] {
            let all = tm.all.iter().cloned().fold(0.0, f64::max);
            t.row(vec![
                n.to_string(),
                name.into(),
                f(pct(&mut tm.from_set, 0.5), 0),
                f(pct(&mut tm.from_set, 0.99), 0),
                f(all, 0),
                f(pct(&mut tm.from_doc, 0.5), 1),
                format!("{ratio:.2}x"),
            ]);
        }
    }
    t.note(format!(
        "{} rounds per row; simulated agents are the agent's real fleet link in this process (parse, verify, merge + validate, fsync'd applied.json, status) with an instant camera side; the echo peer answers with a status naming the version",
        args.rounds
    ));
    t.note("set->applied includes the CLI: connect, read the retained document (600 ms idle wait), check, publish; broker->applied starts when the observer got the document");
    t.emit(results)?;

    let mut tt = Table::new(
        "fleet: MQTT telemetry per agent (real camfleet-agent, PUBLISH bytes on the wire)",
        &[
            "cameras",
            "bytes/record",
            "MB/hour @30 s",
            "MB/hour @10 s",
            "vs video @2 Mbit/s/camera",
        ],
    );
    for cameras in [1u32, 4] {
        let per = telemetry_bytes(kafka, &args, cameras).await?;
        let hour30 = per * 120.0;
        let video = 2e6 / 8.0 * 3600.0 * cameras as f64;
        tt.row(vec![
            cameras.to_string(),
            f(per, 0),
            f(hour30 / 1e6, 3),
            f(per * 360.0 / 1e6, 3),
            format!("{:.5}%", hour30 / video * 100.0),
        ]);
    }
    tt.note("status messages (at connect and per document) and keep-alive pings (4 bytes per keep_alive_s) come on top and are smaller still");
    tt.emit(results)
}
