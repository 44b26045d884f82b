//! The fleet as the page sees it (`[live.fleet]`, docs/live.md "Fleet
//! status" and "A camera owned by another instance"):
//!
//! * the agents' retained `<prefix>/agents/<id>/status` and `.../telemetry`
//!   (docs/mqtt.md), kept per agent and joined to cameras through the
//!   telemetry's camera list, for `/api/cameras` and the page;
//! * with `announce_url`, this instance's retained announcement
//!   `<prefix>/collectors/<instance>`: `{"state":"online","url":..,"cameras":[..]}`
//!   (republished when its cameras change, and every 30 s), with the
//!   broker's last will `{"state":"offline"}`; the other instances'
//!   announcements say where a camera not served here is served.
//!
//! MQTT never touches video: a broker that is away only means no fleet
//! status and no redirects (the 404 with its hint, as without this).
//! A payload that is not what docs/mqtt.md says is counted and ignored.

use super::LiveHub;
use camfleet_shared::config::LiveFleetConfig;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("live.fleet.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("live.fleet.{field} {path}: {message}")]
    File {
        field: &'static str,
        path: String,
        message: String,
    },
}

#[derive(Default)]
struct AgentSeen {
    status: Option<Value>,
    telemetry: Option<Value>,
    telemetry_at: Option<Instant>,
}

struct Announced {
    url: String,
    online: bool,
    cameras: Vec<String>,
}

/// What this instance knows of the fleet; shared with the HTTP routes.
pub struct FleetView {
    prefix: String,
    /// This instance's topic name; its own announcement is not a peer.
    me: String,
    agents: Mutex<BTreeMap<String, AgentSeen>>,
    instances: Mutex<BTreeMap<String, Announced>>,
    connected: AtomicBool,
}

impl FleetView {
    pub fn new(prefix: &str, me: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            me: me.to_string(),
            agents: Mutex::default(),
            instances: Mutex::default(),
            connected: AtomicBool::new(false),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Takes one retained or live message; false if it was not understood
    /// (counted, logged, nothing changed).
    pub fn apply(&self, topic: &str, payload: &[u8]) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        // An empty retained payload clears the topic (MQTT's delete).
        let value: Option<Value> = if payload.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(payload) {
                Ok(v) if v.is_object() => Some(v),
                _ => {
                    tracing::warn!(%topic, "fleet message is not a JSON object; ignored");
                    metrics::counter!("camfleet_collector_fleet_messages_rejected_total")
                        .increment(1);
                    return false;
                }
            }
        };
        match parts.as_slice() {
            ["agents", id, kind @ ("status" | "telemetry")] => {
                let mut agents = self.agents.lock().expect("fleet agents");
                let seen = agents.entry((*id).to_string()).or_default();
                if *kind == "status" {
                    seen.status = value;
                } else {
                    seen.telemetry_at = value.as_ref().map(|_| Instant::now());
                    seen.telemetry = value;
                }
                true
            }
            ["collectors", name] if *name != self.me => {
                let mut all = self.instances.lock().expect("fleet instances");
                match value {
                    None => {
                        all.remove(*name);
                    }
                    Some(v) => {
                        let url = v["url"].as_str().unwrap_or_default().to_string();
                        let cameras = v["cameras"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|c| c.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        all.insert(
                            (*name).to_string(),
                            Announced {
                                online: v["state"] == "online" && !url.is_empty(),
                                url,
                                cameras,
                            },
                        );
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The fleet status of `camera`: the agent whose telemetry lists it,
    /// that agent's state, and the camera's row of its telemetry.
    pub fn camera_status(&self, camera: &str) -> Option<Value> {
        let agents = self.agents.lock().expect("fleet agents");
        agents.iter().find_map(|(id, seen)| {
            let tele = seen.telemetry.as_ref()?;
            let row = tele["cameras"]
                .as_array()?
                .iter()
                .find(|c| c["camera"] == camera)?;
            let status = seen.status.as_ref();
            Some(serde_json::json!({
                "agent_id": id,
                "state": status.and_then(|s| s.get("state")).cloned().unwrap_or(Value::Null),
                "reason": status.and_then(|s| s.get("reason")).cloned().unwrap_or(Value::Null),
                "camera_up": row["up"],
                "fps": row["fps"],
                "bitrate_kbps": row["bitrate_kbps"],
                "frames_dropped": row["frames_dropped"],
                "kafka": tele["kafka"]["state"],
                "spool_oldest_age_s": tele["spool"]["oldest_age_s"],
                "telemetry_age_s": seen.telemetry_at.map(|t| t.elapsed().as_secs_f64()),
            }))
        })
    }

    /// The base URL of another online instance that announces `camera`.
    pub fn owner_of(&self, camera: &str) -> Option<String> {
        let all = self.instances.lock().expect("fleet instances");
        all.values()
            .find(|a| a.online && a.cameras.iter().any(|c| c == camera))
            .map(|a| a.url.trim_end_matches('/').to_string())
    }

    /// Cameras other online instances serve: (camera, base URL).
    pub fn elsewhere(&self) -> Vec<(String, String)> {
        let all = self.instances.lock().expect("fleet instances");
        let mut out: Vec<(String, String)> = all
            .values()
            .filter(|a| a.online)
            .flat_map(|a| {
                a.cameras
                    .iter()
                    .map(|c| (c.clone(), a.url.trim_end_matches('/').to_string()))
            })
            .collect();
        out.sort();
        out
    }
}

fn options(cfg: &LiveFleetConfig, me: &str) -> Result<MqttOptions, FleetError> {
    let url_err = |message: &str| FleetError::Url {
        url: cfg.url.clone(),
        message: message.to_string(),
    };
    let tls = cfg.url.starts_with("mqtts://");
    let rest = cfg
        .url
        .strip_prefix("mqtt://")
        .or_else(|| cfg.url.strip_prefix("mqtts://"))
        .ok_or_else(|| url_err("use mqtt://host:port or mqtts://host:port"))?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| url_err("use mqtt://host:port"))?;
    let mut o = MqttOptions::new(
        format!("camfleet-collector-{me}-{}", std::process::id()),
        host,
        port,
    );
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    if tls {
        let config = match &cfg.ca_file {
            Some(f) => rumqttc::TlsConfiguration::SimpleNative {
                ca: std::fs::read(f).map_err(|e| FleetError::File {
                    field: "ca_file",
                    path: f.display().to_string(),
                    message: e.to_string(),
                })?,
                client_auth: None,
            },
            None => rumqttc::TlsConfiguration::Native,
        };
        o.set_transport(rumqttc::Transport::tls_with_config(config));
    }
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| FleetError::File {
                    field: "password_file",
                    path: f.display().to_string(),
                    message: e.to_string(),
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if !cfg.announce_url.is_empty() {
        o.set_last_will(LastWill::new(
            announce_topic(&cfg.topic_prefix, me),
            r#"{"state":"offline","reason":"connection lost"}"#,
            QoS::AtLeastOnce,
            true,
        ));
    }
    Ok(o)
}

fn announce_topic(prefix: &str, me: &str) -> String {
    format!("{prefix}/collectors/{me}")
}

/// Connects (in the background, reconnecting with backoff from 1 s to
/// 30 s) and keeps the view current; announces this instance's cameras
/// when `announce_url` is set.
pub fn start(cfg: &LiveFleetConfig, hub: Arc<LiveHub>) -> Result<Arc<FleetView>, FleetError> {
    let me = cfg.instance_name();
    let view = Arc::new(FleetView::new(&cfg.topic_prefix, &me));
    let (client, mut events) = AsyncClient::new(options(cfg, &me)?, 64);
    let prefix = cfg.topic_prefix.clone();
    let announce = (!cfg.announce_url.is_empty()).then(|| cfg.announce_url.clone());
    let topics = [
        format!("{prefix}/agents/+/status"),
        format!("{prefix}/agents/+/telemetry"),
        format!("{prefix}/collectors/+"),
    ];
    let v = view.clone();
    let c = client.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_secs(1);
                    v.connected.store(true, Ordering::Relaxed);
                    tracing::info!("fleet: connected to the MQTT broker");
                    for t in &topics {
                        // Queued in rumqttc's bounded request channel.
                        let _ = c.try_subscribe(t, QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    v.apply(&p.topic, &p.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    if v.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "fleet: MQTT connection lost; reconnecting");
                    } else {
                        tracing::debug!(error = %e, "fleet: MQTT connect failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    if let Some(url) = announce {
        let topic = announce_topic(&prefix, &me);
        let v = view.clone();
        let c = client;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut last, mut last_at, mut was_connected) = (Vec::new(), Instant::now(), false);
            loop {
                tick.tick().await;
                let connected = v.connected();
                let mut cameras: Vec<String> = hub
                    .cameras()
                    .keys()
                    .map(|c| c.as_str().to_string())
                    .collect();
                cameras.sort();
                // On (re)connect, on a change, and every 30 s.
                let due = connected
                    && (!was_connected
                        || cameras != last
                        || last_at.elapsed() >= Duration::from_secs(30));
                was_connected = connected;
                if !due {
                    continue;
                }
                let body = serde_json::json!({"state": "online", "url": url, "cameras": cameras});
                if c.try_publish(&topic, QoS::AtLeastOnce, true, body.to_string())
                    .is_ok()
                {
                    last = cameras;
                    last_at = Instant::now();
                }
            }
        });
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_join_cameras_and_announcements_name_owners() {
        let v = FleetView::new("camfleet", "me");
        assert!(v.apply(
            "camfleet/agents/box-1/telemetry",
            br#"{"cameras":[{"camera":"s/a","up":true,"fps":15.0,"bitrate_kbps":300,"frames_dropped":0}],
                 "kafka":{"state":"ok"},"spool":{"oldest_age_s":null}}"#
        ));
        assert!(v.apply("camfleet/agents/box-1/status", br#"{"state":"online"}"#));
        let s = v.camera_status("s/a").unwrap();
        assert_eq!(
            (
                s["agent_id"].as_str(),
                s["state"].as_str(),
                s["fps"].as_f64()
            ),
            (Some("box-1"), Some("online"), Some(15.0))
        );
        assert!(v.camera_status("s/b").is_none());
        // Bad payloads change nothing.
        assert!(!v.apply("camfleet/agents/box-1/status", b"not json"));
        assert_eq!(v.camera_status("s/a").unwrap()["state"], "online");

        assert!(v.apply(
            "camfleet/collectors/other",
            br#"{"state":"online","url":"http://10.0.0.6:9464/","cameras":["s/b"]}"#
        ));
        // Its own announcement is not a peer.
        v.apply(
            "camfleet/collectors/me",
            br#"{"state":"online","url":"http://me","cameras":["s/a"]}"#,
        );
        assert_eq!(v.owner_of("s/b").as_deref(), Some("http://10.0.0.6:9464"));
        assert_eq!(v.owner_of("s/a"), None);
        v.apply("camfleet/collectors/other", br#"{"state":"offline"}"#);
        assert_eq!(v.owner_of("s/b"), None);
        v.apply("camfleet/collectors/other", b"");
        assert!(v.elsewhere().is_empty());
    }
}
