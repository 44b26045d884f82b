//! The agent's link to the fleet over MQTT (docs/mqtt.md): a retained status
//! per agent, with a last will that marks it offline, and periodic telemetry.
//!
//! * `<prefix>/agents/<agent_id>/status` (retained): `{"state":"online",...}`
//!   published at every (re)connect; `{"state":"offline","reason":"stopped"}`
//!   at a clean stop; the broker publishes the will
//!   `{"state":"offline","reason":"connection lost"}` when the agent vanishes
//!   (about 1.5 keep-alives after its last packet).
//! * `<prefix>/agents/<agent_id>/telemetry` (not retained), every
//!   `telemetry_period_s`: per camera fps, bitrate, drops, encoder errors and
//!   restarts over the last period; spool bytes and oldest age; free disk;
//!   version; uptime.
//!
//! MQTT being away never touches video: publishing is fire-and-forget into
//! a bounded queue, and rumqttc reconnects in the background.

use crate::stats::CameraStats;
use camfleet_shared::config::MqttConfig;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("mqtt: {0}")]
    Config(#[from] camfleet_shared::config::ConfigError),
}

/// What telemetry reads besides the cameras' counters.
pub type SpoolProbe = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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

impl Fleet {
    /// Connects (in the background) and starts publishing.
    pub fn start(
        cfg: &MqttConfig,
        cameras: Vec<(String, Arc<CameraStats>)>,
        spool: SpoolProbe,
    ) -> Result<Self, FleetError> {
        let (host, port) = cfg.host_port()?;
        let base = format!("{}/agents/{}", cfg.topic_prefix, cfg.agent_id);
        let status_topic = format!("{base}/status");
        let telemetry_topic = format!("{base}/telemetry");
        let mut options = MqttOptions::new(format!("camfleet-agent-{}", cfg.agent_id), host, port);
        options
            .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
            .set_clean_session(true)
            .set_last_will(LastWill::new(
                &status_topic,
                offline("connection lost"),
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (stop, stop_rx) = watch::channel(false);
        let started_us = now_us();
        let online = json!({
            "state": "online",
            "version": env!("CARGO_PKG_VERSION"),
            "started_us": started_us,
            "cameras": cameras.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        })
        .to_string();

        let connection = {
            let (client, status_topic, mut stop_rx) =
                (client.clone(), status_topic.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut connected = false;
                loop {
                    let event = tokio::select! {
                        _ = stop_rx.changed() => return,
                        e = eventloop.poll() => e,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected = true;
                            tracing::info!("mqtt connected; status online");
                            let _ = client.try_publish(
                                &status_topic,
                                QoS::AtLeastOnce,
                                true,
                                online.clone(),
                            );
                        }
                        // The clean stop: "offline, stopped" went out before it.
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            if connected {
                                tracing::warn!(error = %e, "mqtt connection lost; retrying every 2 s");
                            } else {
                                tracing::debug!(error = %e, "mqtt not reachable; retrying");
                            }
                            connected = false;
                            tokio::select! {
                                _ = stop_rx.changed() => return,
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                        }
                    }
                }
            })
        };

        let telemetry = {
            let (client, mut stop_rx) = (client.clone(), stop_rx);
            let period = Duration::from_secs(cfg.telemetry_period_s);
            tokio::spawn(async move {
                let mut last = (Instant::now(), snapshot(&cameras));
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => return,
                        _ = tick.tick() => {}
                    }
                    let now = (Instant::now(), snapshot(&cameras));
                    let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                    let cams: Vec<serde_json::Value> = cameras
                        .iter()
                        .zip(now.1.iter().zip(&last.1))
                        .map(|((id, stats), (n, l))| {
                            json!({
                                "camera": id,
                                "up": stats.is_up(),
                                "fps": ((n.0 - l.0) as f64 / secs * 10.0).round() / 10.0,
                                "bitrate_kbps": ((n.1 - l.1) as f64 * 8.0 / secs / 1000.0).round(),
                                "frames_dropped": n.2 - l.2,
                                "encode_errors": n.3 - l.3,
                                "restarts": n.4 - l.4,
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
                    });
                    if let Err(e) = client.try_publish(
                        &telemetry_topic,
                        QoS::AtMostOnce,
                        false,
                        record.to_string(),
                    ) {
                        tracing::debug!(error = %e, "telemetry not queued (MQTT away)");
                    }
                    last = now;
                }
            })
        };
        Ok(Self {
            client,
            status_topic,
            stop,
            tasks: vec![connection, telemetry],
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

/// (encoded, bytes, dropped, encode errors, restarts) per camera.
fn snapshot(cameras: &[(String, Arc<CameraStats>)]) -> Vec<(u64, u64, u64, u64, u64)> {
    cameras
        .iter()
        .map(|(_, s)| {
            (
                s.frames_encoded.get(),
                s.bytes_encoded.get(),
                s.frames_dropped_busy.get(),
                s.encode_errors.get(),
                s.restarts.get(),
            )
        })
        .collect()
}
