//! The agent's link to the fleet over MQTT (docs/mqtt.md).
//!
//! * `<prefix>/agents/<id>/status` (retained): online with what is applied
//!   (version and content hash per scope), the last result (applied or
//!   rejected with the reason) and the last rejection; "offline, stopped"
//!   at a clean stop; the broker's will "offline, connection lost".
//! * `<prefix>/agents/<id>/telemetry` (retained, QoS 0), every
//!   `telemetry_period_s`.
//! * `<prefix>/sites/<site>/desired` and `<prefix>/agents/<id>/desired`
//!   (retained, read): desired config documents (`camfleet_shared::fleet`).
//!
//! A document is parsed, its signature checked, its version compared with
//! the applied one, merged (`agent.toml <- site <- agent`) and validated,
//! then handed to the app ([`ApplyRequest`]), which applies it live or
//! refuses it; only then is it persisted ([`applied`]) and reported. A
//! rejected document changes nothing: the cameras keep running.
//!
//! MQTT being away never touches video: publishing is fire-and-forget into
//! a bounded queue (a full queue drops telemetry, never blocks), rumqttc
//! reconnects with backoff, and only the newest document per scope waits
//! to be processed (a `watch`), so nothing queues without bound.

pub mod applied;

use crate::stats::CameraStats;
use applied::{Applied, ConfigSource};
use camfleet_shared::config::{AgentConfig, MqttConfig};
use camfleet_shared::fleet::{self, DesiredDoc, DocError, Scope};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("mqtt: {0}")]
    Config(#[from] camfleet_shared::config::ConfigError),
    #[error("mqtt.password_file {path}: {error}")]
    PasswordFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("mqtt.ca_file {path}: {error}")]
    CaFile {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What telemetry reads besides the cameras' counters (spool, Kafka).
pub type Probe = Arc<dyn Fn() -> Value + Send + Sync>;

/// The cameras running now, for telemetry and the status (the app keeps it
/// current as cameras come and go).
pub type CameraRegistry = Arc<Mutex<Vec<(String, Arc<CameraStats>)>>>;

/// A merged, validated config for the app to apply. The reply is a short
/// summary of what changed, or the reason it cannot be applied (naming the
/// field); nothing changes on an error.
pub struct ApplyRequest {
    pub config: AgentConfig,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Everything the link needs from the agent.
pub struct FleetDeps {
    /// agent.toml as read at start: the base every merge starts from.
    pub local_toml: String,
    pub applied: Applied,
    pub source: ConfigSource,
    pub data_dir: PathBuf,
    pub cameras: CameraRegistry,
    pub spool: Probe,
    pub kafka: Probe,
    pub apply: mpsc::Sender<ApplyRequest>,
    /// Current telemetry period in seconds (a fleet document may change it).
    pub telemetry_period_s: watch::Receiver<u64>,
}

pub struct Fleet {
    client: AsyncClient,
    status_topic: String,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn offline(reason: &str) -> String {
    json!({"state": "offline", "reason": reason, "version": env!("CARGO_PKG_VERSION")}).to_string()
}

/// The result of one document.
#[derive(Clone, Debug)]
struct Outcome {
    scope: Scope,
    version: Option<u64>,
    hash: Option<String>,
    /// None = applied.
    rejected: Option<String>,
    time_us: u64,
}

impl Outcome {
    fn to_json(&self) -> Value {
        json!({
            "scope": self.scope.as_str(),
            "version": self.version,
            "hash": self.hash,
            "result": if self.rejected.is_some() { "rejected" } else { "applied" },
            "reason": self.rejected,
            "time_us": self.time_us,
        })
    }
}

/// What the status topic says, kept between publications.
struct Report {
    agent_id: String,
    site: Option<String>,
    started_us: u64,
    applied: Applied,
    source: &'static str,
    last: Option<Outcome>,
    last_rejection: Option<Outcome>,
}

struct Link {
    cfg: MqttConfig,
    local_toml: String,
    data_dir: PathBuf,
    trusted: Vec<ed25519_dalek::VerifyingKey>,
    client: AsyncClient,
    status_topic: String,
    cameras: CameraRegistry,
    report: Mutex<Report>,
    apply: mpsc::Sender<ApplyRequest>,
}

impl Link {
    fn status_json(&self) -> String {
        let r = self.report.lock().expect("report");
        let cameras: Vec<String> = self
            .cameras
            .lock()
            .expect("cameras")
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        json!({
            "state": "online",
            "agent_id": r.agent_id,
            "site": r.site,
            "version": env!("CARGO_PKG_VERSION"),
            "started_us": r.started_us,
            "cameras": cameras,
            "config_source": r.source,
            "applied": r.applied.summary(),
            "last": r.last.as_ref().map(Outcome::to_json),
            "last_rejection": r.last_rejection.as_ref().map(Outcome::to_json),
        })
        .to_string()
    }

    fn publish_status(&self) {
        if let Err(e) = self.client.try_publish(
            &self.status_topic,
            QoS::AtLeastOnce,
            true,
            self.status_json(),
        ) {
            tracing::debug!(error = %e, "status not queued (MQTT away); sent at reconnect");
        }
    }

    fn target(&self, scope: Scope) -> Option<String> {
        match scope {
            Scope::Site => self.cfg.site.clone(),
            Scope::Agent => Some(self.cfg.agent_id.clone()),
        }
    }

    /// One desired document, start to finish.
    async fn process(&self, scope: Scope, payload: &[u8]) {
        if payload.is_empty() {
            // Clearing a retained message publishes an empty payload.
            tracing::info!(
                scope = scope.as_str(),
                "desired document cleared; keeping the applied config"
            );
            return;
        }
        let outcome = match self.check_and_apply(scope, payload).await {
            Ok(None) => return,
            Ok(Some((doc, summary))) => {
                tracing::info!(scope = scope.as_str(), version = doc.version, %summary, "fleet config applied");
                Outcome {
                    scope,
                    version: Some(doc.version),
                    hash: Some(doc.content_hash()),
                    rejected: None,
                    time_us: now_us(),
                }
            }
            Err((version, reason)) => {
                tracing::warn!(scope = scope.as_str(), ?version, %reason, "fleet config rejected; the running config stays");
                metrics::counter!("camfleet_agent_fleet_rejected_total").increment(1);
                Outcome {
                    scope,
                    version,
                    hash: None,
                    rejected: Some(reason),
                    time_us: now_us(),
                }
            }
        };
        {
            let mut r = self.report.lock().expect("report");
            if outcome.rejected.is_some() {
                r.last_rejection = Some(outcome.clone());
            }
            r.last = Some(outcome);
        }
        self.publish_status();
    }

    /// `Ok(None)`: the document is the one already applied (a retained
    /// copy seen again at reconnect). Errors carry the version if known.
    async fn check_and_apply(
        &self,
        scope: Scope,
        payload: &[u8],
    ) -> Result<Option<(DesiredDoc, String)>, (Option<u64>, String)> {
        let doc = DesiredDoc::parse(payload).map_err(|e| (None, e.to_string()))?;
        let v = Some(doc.version);
        let target = self.target(scope).expect("subscribed only with a target");
        doc.verify(&self.trusted, scope, &target)
            .map_err(|e| (v, e.to_string()))?;
        let mut next = self.report.lock().expect("report").applied.clone();
        if let Some(cur) = next.get(scope) {
            if doc.version < cur.version {
                let e = DocError::Older {
                    got: doc.version,
                    applied: cur.version,
                };
                return Err((v, e.to_string()));
            }
            if doc.version == cur.version {
                if doc.content_hash() == cur.content_hash() {
                    return Ok(None);
                }
                return Err((
                    v,
                    format!(
                        "version: {} was already applied with other content; publish a higher version",
                        doc.version
                    ),
                ));
            }
        }
        next.set(scope, doc.clone());
        let config =
            fleet::merge(&self.local_toml, &next.overlays()).map_err(|e| (v, e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.apply
            .send(ApplyRequest { config, reply })
            .await
            .map_err(|_| (v, "agent is shutting down".to_string()))?;
        let summary = match tokio::time::timeout(Duration::from_secs(60), answer).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(reason))) => return Err((v, reason)),
            Ok(Err(_)) => return Err((v, "agent is shutting down".to_string())),
            Err(_) => return Err((v, "not applied within 60 s".to_string())),
        };
        if let Err(e) = next.save(&self.data_dir) {
            // Running on it now; the next start falls back to the older file.
            tracing::error!(error = %e, "applied fleet config not persisted");
        }
        let mut r = self.report.lock().expect("report");
        r.applied = next;
        r.source = "mqtt";
        Ok(Some((doc, summary)))
    }
}

/// For `camfleet-agent validate`: the files `[mqtt]` names are readable.
pub fn check_files(cfg: &MqttConfig) -> Result<(), FleetError> {
    if let Some(f) = &cfg.password_file {
        std::fs::read(f).map_err(|error| FleetError::PasswordFile {
            path: f.clone(),
            error,
        })?;
    }
    if let Some(f) = &cfg.ca_file {
        std::fs::read(f).map_err(|error| FleetError::CaFile {
            path: f.clone(),
            error,
        })?;
    }
    Ok(())
}

impl Fleet {
    /// Connects (in the background), publishes status and telemetry, and
    /// applies desired documents through `deps.apply`.
    pub fn start(cfg: &MqttConfig, deps: FleetDeps) -> Result<Self, FleetError> {
        let (host, port) = cfg.host_port()?;
        let status_topic = fleet::status_topic(&cfg.topic_prefix, &cfg.agent_id);
        let telemetry_topic = fleet::telemetry_topic(&cfg.topic_prefix, &cfg.agent_id);
        let mut options = MqttOptions::new(format!("camfleet-agent-{}", cfg.agent_id), host, port);
        options
            .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
            .set_clean_session(true)
            // Documents above fleet::MAX_DOC_BYTES are read and rejected
            // with a reason; a packet above this limit would cost the
            // connection (and come back with every retained redelivery).
            .set_max_packet_size(16 << 20, 1 << 20)
            .set_last_will(LastWill::new(
                &status_topic,
                offline("connection lost"),
                QoS::AtLeastOnce,
                true,
            ));
        if cfg.uses_tls() {
            let tls = match &cfg.ca_file {
                Some(path) => rumqttc::TlsConfiguration::SimpleNative {
                    ca: std::fs::read(path).map_err(|error| FleetError::CaFile {
                        path: path.clone(),
                        error,
                    })?,
                    client_auth: None,
                },
                None => rumqttc::TlsConfiguration::Native,
            };
            options.set_transport(rumqttc::Transport::tls_with_config(tls));
        }
        if let Some(user) = &cfg.username {
            let password = match (&cfg.password, &cfg.password_file) {
                (Some(p), _) => p.expose().to_string(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|error| FleetError::PasswordFile {
                        path: f.clone(),
                        error,
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                (None, None) => String::new(),
            };
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (stop, stop_rx) = watch::channel(false);
        let started_us = now_us();
        let link = Arc::new(Link {
            cfg: cfg.clone(),
            local_toml: deps.local_toml,
            data_dir: deps.data_dir,
            trusted: cfg
                .trusted_public_keys
                .iter()
                .filter_map(|k| fleet::parse_public_key(k).ok())
                .collect(),
            client: client.clone(),
            status_topic: status_topic.clone(),
            cameras: deps.cameras.clone(),
            report: Mutex::new(Report {
                agent_id: cfg.agent_id.clone(),
                site: cfg.site.clone(),
                started_us,
                applied: deps.applied,
                source: match deps.source {
                    ConfigSource::Local => "local",
                    ConfigSource::Persisted => "persisted",
                },
                last: None,
                last_rejection: None,
            }),
            apply: deps.apply,
        });
        let mut subscriptions = vec![(
            fleet::desired_topic(&cfg.topic_prefix, Scope::Agent, &cfg.agent_id),
            Scope::Agent,
        )];
        if let Some(site) = &cfg.site {
            subscriptions.push((
                fleet::desired_topic(&cfg.topic_prefix, Scope::Site, site),
                Scope::Site,
            ));
        }
        // Newest payload per scope; older unprocessed ones are superseded.
        let (site_tx, site_rx) = watch::channel(None::<Vec<u8>>);
        let (agent_tx, agent_rx) = watch::channel(None::<Vec<u8>>);

        let connection = {
            let (link, mut stop_rx) = (link.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut connected = false;
                let mut retry = Duration::from_secs(1);
                loop {
                    let event = tokio::select! {
                        _ = stop_rx.changed() => return,
                        e = eventloop.poll() => e,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected = true;
                            retry = Duration::from_secs(1);
                            tracing::info!("mqtt connected; status online");
                            link.publish_status();
                            for (topic, _) in &subscriptions {
                                if let Err(e) = link.client.try_subscribe(topic, QoS::AtLeastOnce) {
                                    tracing::error!(error = %e, %topic, "cannot subscribe");
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            match subscriptions.iter().find(|(t, _)| *t == p.topic) {
                                Some((_, Scope::Site)) => {
                                    site_tx.send_replace(Some(p.payload.to_vec()))
                                }
                                Some((_, Scope::Agent)) => {
                                    agent_tx.send_replace(Some(p.payload.to_vec()))
                                }
                                None => None,
                            };
                        }
                        Ok(Event::Incoming(Packet::SubAck(s))) => {
                            if s.return_codes
                                .iter()
                                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            {
                                tracing::error!(
                                    "broker refused a desired-config subscription (ACL?)"
                                );
                            }
                        }
                        // The clean stop: "offline, stopped" went out before it.
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            if connected {
                                tracing::warn!(error = %e, "mqtt connection lost; reconnecting with backoff");
                            } else {
                                tracing::debug!(error = %e, "mqtt not reachable; retrying");
                            }
                            connected = false;
                            tokio::select! {
                                _ = stop_rx.changed() => return,
                                _ = tokio::time::sleep(retry) => {}
                            }
                            retry = (retry * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            })
        };

        let documents = {
            let (link, mut stop_rx) = (link.clone(), stop_rx.clone());
            let (mut site_rx, mut agent_rx) = (site_rx, agent_rx);
            tokio::spawn(async move {
                loop {
                    let scope = tokio::select! {
                        _ = stop_rx.changed() => return,
                        Ok(()) = site_rx.changed() => Scope::Site,
                        Ok(()) = agent_rx.changed() => Scope::Agent,
                    };
                    let payload = match scope {
                        Scope::Site => site_rx.borrow_and_update().clone(),
                        Scope::Agent => agent_rx.borrow_and_update().clone(),
                    };
                    if let Some(payload) = payload {
                        link.process(scope, &payload).await;
                    }
                }
            })
        };

        let telemetry = {
            let (client, mut stop_rx) = (client.clone(), stop_rx);
            let (cameras, spool, kafka) = (deps.cameras, deps.spool, deps.kafka);
            let mut period_rx = deps.telemetry_period_s;
            tokio::spawn(async move {
                let mut last_at = Instant::now();
                let mut last = snapshot(&cameras);
                loop {
                    let period = Duration::from_secs(*period_rx.borrow_and_update());
                    tokio::select! {
                        _ = stop_rx.changed() => return,
                        _ = period_rx.changed() => continue,
                        _ = tokio::time::sleep(period.saturating_sub(last_at.elapsed())) => {}
                    }
                    let now = snapshot(&cameras);
                    let secs = last_at.elapsed().as_secs_f64().max(1e-3);
                    last_at = Instant::now();
                    let cams: Vec<Value> = now
                        .iter()
                        .map(|(id, (up, n))| {
                            // A camera restarted by a config change has fresh counters.
                            let l = last.get(id).map_or([0; 6], |(_, l)| *l);
                            json!({
                                "camera": id,
                                "up": up,
                                "fps": ((n[0].saturating_sub(l[0])) as f64 / secs * 10.0).round() / 10.0,
                                "bitrate_kbps": ((n[1].saturating_sub(l[1])) as f64 * 8.0 / secs / 1000.0).round(),
                                "frames_dropped": n[2].saturating_sub(l[2]),
                                "encode_errors": n[3].saturating_sub(l[3]),
                                "restarts": n[4].saturating_sub(l[4]),
                                "frames_failed": n[5].saturating_sub(l[5]),
                            })
                        })
                        .collect();
                    let record = json!({
                        "version": env!("CARGO_PKG_VERSION"),
                        "time_us": now_us(),
                        "uptime_s": (now_us().saturating_sub(started_us)) / 1_000_000,
                        "period_s": secs,
                        "cameras": cams,
                        "spool": spool(),
                        "kafka": kafka(),
                    });
                    // Retained: `camfleet list` shows the last record at once.
                    if let Err(e) = client.try_publish(
                        &telemetry_topic,
                        QoS::AtMostOnce,
                        true,
                        record.to_string(),
                    ) {
                        tracing::debug!(error = %e, "telemetry dropped (MQTT away, queue full)");
                    }
                    last = now;
                }
            })
        };
        Ok(Self {
            client,
            status_topic,
            stop,
            tasks: vec![connection, documents, telemetry],
        })
    }

    /// Says "offline, stopped" (retained) and disconnects, within 2 s.
    pub async fn stop(self) {
        let _ = self.client.try_publish(
            &self.status_topic,
            QoS::AtLeastOnce,
            true,
            offline("stopped"),
        );
        let _ = self.client.try_disconnect();
        // Let the event loop send both before it is stopped.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.tasks[0].is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

/// Per camera: up, and (encoded, bytes, dropped, encode errors, restarts, failed).
type Snapshot = BTreeMap<String, (bool, [u64; 6])>;

fn snapshot(cameras: &CameraRegistry) -> Snapshot {
    cameras
        .lock()
        .expect("cameras")
        .iter()
        .map(|(id, s)| {
            (
                id.clone(),
                (
                    s.is_up(),
                    [
                        s.frames_encoded.get(),
                        s.bytes_encoded.get(),
                        s.frames_dropped_busy.get(),
                        s.encode_errors.get(),
                        s.restarts.get(),
                        s.frames_failed.get(),
                    ],
                ),
            )
        })
        .collect()
}
