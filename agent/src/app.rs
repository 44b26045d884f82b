//! Runs the agent's cameras (each a [`Camera`] pipeline that restarts alone)
//! over one shared sink: the disk spool wrapping Kafka (`crate::spool`), and
//! applies desired configs from the fleet link live (`crate::fleet`):
//! a camera whose settings changed is restarted (new epoch, sequence goes
//! on), added ones start, removed ones stop, the others are not touched; a
//! Kafka change stops every camera, flushes, swaps the client, restarts.
//!
//! Shutdown order: stop every capture -> drain encoders -> hand the rest to
//! the sink and record each camera's exact sequence state -> flush to Kafka
//! (bounded; what is not acknowledged stays in the spool) -> settle acks.

use crate::camera::{Camera, CameraContext, CameraReport, SourceOpener, SystemSources};
use crate::fleet::applied::{Applied, ConfigSource};
use crate::fleet::{ApplyRequest, CameraRegistry, Fleet, FleetDeps, Probe};
use crate::sink::kafka::KafkaSink;
use crate::sink::switch::SwitchSink;
use crate::sink::FrameSink;
use crate::spool::SpoolSink;
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::{
    AgentConfig, AgentKafkaConfig, CameraConfig, SourceConfig, SpoolConfig,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Time allowed for Kafka to acknowledge what is queued at shutdown; what is
/// not acknowledged by then stays in the spool. With capture and encoder
/// stops, the agent exits within 10 s of SIGTERM.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(7);

/// Runs every camera until each one's source ends or `shutdown` resolves.
/// Cameras that fail are retried inside their pipelines; this returns their
/// reports.
pub async fn run<S: FrameSink>(
    config: AgentConfig,
    sink: Arc<SpoolSink<S>>,
    shutdown: impl Future<Output = ()>,
) -> Vec<CameraReport> {
    run_with(
        config,
        sink,
        Arc::new(SystemClock),
        Arc::new(SystemSources),
        shutdown,
    )
    .await
}

/// [`run`] with the clock and the sources injected (tests drive failures).
pub async fn run_with<S: FrameSink>(
    config: AgentConfig,
    sink: Arc<SpoolSink<S>>,
    clock: Arc<dyn Clock>,
    sources: Arc<dyn SourceOpener>,
    shutdown: impl Future<Output = ()>,
) -> Vec<CameraReport> {
    run_live(config, sink, clock, sources, None, shutdown).await
}

/// Replaces the Kafka client: checks and builds it from the new settings,
/// returning the step that installs it (run after the cameras stopped and
/// the sink flushed), or why it cannot be built.
pub type KafkaReplacer =
    Box<dyn Fn(&AgentKafkaConfig) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// What an agent with a fleet link needs to apply desired configs live.
pub struct Live {
    /// agent.toml as read at start (the base of every merge).
    pub local_toml: String,
    pub applied: Applied,
    pub source: ConfigSource,
    pub replace_kafka: KafkaReplacer,
    /// Kafka connection state for telemetry.
    pub kafka_state: Probe,
}

/// [`Live`] for the real agent: the Kafka client behind `kafka` is the one
/// a fleet config may replace.
pub fn live_kafka(
    local_toml: String,
    applied: Applied,
    source: ConfigSource,
    kafka: Arc<SwitchSink<KafkaSink>>,
) -> Live {
    let (k1, k2) = (kafka.clone(), kafka);
    Live {
        local_toml,
        applied,
        source,
        replace_kafka: Box::new(move |cfg| {
            let new = KafkaSink::new(cfg).map_err(|e| e.to_string())?;
            let k = k1.clone();
            Ok(Box::new(move || {
                let old = k.replace(new);
                // Its last acknowledgements resolve while this task holds it.
                tokio::spawn(async move {
                    let _ = old.flush(Duration::from_secs(30)).await;
                });
            }))
        }),
        kafka_state: Arc::new(move || k2.current().connection_state()),
    }
}

/// The running cameras and what they were started with.
struct Running<S: FrameSink> {
    ctx: Arc<CameraContext<S>>,
    cameras: BTreeMap<String, (CameraConfig, Camera)>,
    registry: CameraRegistry,
    reports: Vec<CameraReport>,
    acks: Vec<(String, tokio::task::JoinHandle<()>)>,
}

impl<S: FrameSink> Running<S> {
    fn start(&mut self, cfg: CameraConfig) {
        let camera = Camera::start(cfg.clone(), self.ctx.clone());
        self.cameras.insert(cfg.id.to_string(), (cfg, camera));
        self.publish();
    }

    fn publish(&self) {
        *self.registry.lock().expect("registry") = self
            .cameras
            .values()
            .map(|(_, c)| (c.id.to_string(), c.stats.clone()))
            .collect();
    }

    /// Stops the named cameras and waits for their pipelines to end (their
    /// acknowledgements settle in the background).
    async fn stop(&mut self, ids: &[String]) {
        let stopping: Vec<_> = ids
            .iter()
            .filter_map(|id| self.cameras.remove(id))
            .collect();
        stopping.iter().for_each(|(_, c)| c.stop());
        for (_, c) in stopping {
            let end = c.join().await;
            self.acks.push((end.report.camera.clone(), end.acks));
            self.reports.push(end.report);
        }
        self.publish();
    }

    /// Collects cameras whose sources ended on their own.
    async fn reap(&mut self) {
        let done: Vec<String> = self
            .cameras
            .iter()
            .filter(|(_, (_, c))| c.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        if !done.is_empty() {
            self.stop(&done).await;
        }
    }
}

/// [`run_with`], plus the fleet link when `config.mqtt` is set: desired
/// configs arrive from it and are applied here, restarting only what they
/// change (docs/mqtt.md, "Applying").
pub async fn run_live<S: FrameSink>(
    config: AgentConfig,
    sink: Arc<SpoolSink<S>>,
    clock: Arc<dyn Clock>,
    sources: Arc<dyn SourceOpener>,
    live: Option<Live>,
    shutdown: impl Future<Output = ()>,
) -> Vec<CameraReport> {
    let ctx = Arc::new(CameraContext {
        sink: sink.clone(),
        data_dir: config.data_dir.clone(),
        clock,
        sources,
    });
    let mut running = Running {
        ctx,
        cameras: BTreeMap::new(),
        registry: Arc::new(Mutex::new(Vec::new())),
        reports: Vec::new(),
        acks: Vec::new(),
    };
    for c in &config.cameras {
        running.start(c.clone());
    }
    let (apply_tx, mut apply_rx) = mpsc::channel::<ApplyRequest>(1);
    let period = config.mqtt.as_ref().map_or(30, |m| m.telemetry_period_s);
    let (period_tx, period_rx) = watch::channel(period);
    let mut replace_kafka = None;
    let fleet = match (&config.mqtt, live) {
        (Some(mqtt), Some(live)) => {
            replace_kafka = Some(live.replace_kafka);
            let probe_sink = sink.clone();
            let deps = FleetDeps {
                local_toml: live.local_toml,
                applied: live.applied,
                source: live.source,
                data_dir: config.data_dir.clone(),
                cameras: running.registry.clone(),
                spool: Arc::new(move || spool_summary(&probe_sink.status())),
                kafka: live.kafka_state,
                apply: apply_tx,
                telemetry_period_s: period_rx,
            };
            match Fleet::start(mqtt, deps) {
                Ok(f) => Some(f),
                Err(e) => {
                    // Video goes on without the fleet link.
                    tracing::error!(error = %e, "fleet link not started");
                    None
                }
            }
        }
        _ => {
            drop(apply_tx);
            None
        }
    };
    let service = tokio::spawn(crate::service::notify_loop(running.registry.clone()));
    let mut current = config;
    tokio::pin!(shutdown);
    // How soon the end of a finite source is noticed.
    let mut reap = tokio::time::interval(Duration::from_millis(100));
    loop {
        if running.cameras.is_empty() {
            break;
        }
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown: stopping capture, draining encoders, flushing to Kafka");
                crate::service::stopping();
                service.abort();
                running.cameras.values().for_each(|(_, c)| c.stop());
                let all: Vec<String> = running.cameras.keys().cloned().collect();
                running.stop(&all).await;
                break;
            }
            Some(req) = apply_rx.recv() => {
                let result = apply(&mut running, &mut current, req.config, &sink, replace_kafka.as_ref(), &period_tx).await;
                let _ = req.reply.send(result);
            }
            _ = reap.tick() => running.reap().await,
        }
    }
    service.abort();
    // Every encoder has stopped: send what Kafka will take within the
    // bound; the rest stays in the spool for the next start.
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH).await {
        tracing::error!(error = %e, "spool flush at shutdown incomplete");
    }
    for (camera, acks) in running.acks {
        // Every reply was settled by the flush; bounded in case one was not.
        if tokio::time::timeout(Duration::from_secs(1), acks)
            .await
            .is_err()
        {
            tracing::warn!(%camera, "acknowledgements still pending at exit");
        }
    }
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }
    running.reports
}

/// Spool settings the running spool cannot take live.
fn fixed_spool_change(a: &SpoolConfig, b: &SpoolConfig) -> Option<&'static str> {
    if a.mode != b.mode {
        Some("spool.mode")
    } else if a.flush_every_ms != b.flush_every_ms {
        Some("spool.flush_every_ms")
    } else if a.switch_after_ms != b.switch_after_ms {
        Some("spool.switch_after_ms")
    } else if a.max_in_flight_bytes != b.max_in_flight_bytes {
        Some("spool.max_in_flight_bytes")
    } else if a.dir != b.dir {
        Some("spool.dir")
    } else {
        None
    }
}

/// What `validate` checks of a source without taking a running camera's
/// device: that the file or device node exists.
fn check_source(i: usize, cam: &CameraConfig) -> Result<(), String> {
    let (field, path) = match &cam.source {
        SourceConfig::V4l2 { device, .. } => ("device", device),
        SourceConfig::Y4m { path, .. } => ("path", path),
        SourceConfig::TestPattern { .. } => return Ok(()),
    };
    if !path.exists() {
        return Err(format!(
            "camera[{i}] ({}).source.{field}: {} does not exist",
            cam.id,
            path.display()
        ));
    }
    if let SourceConfig::Y4m { path, .. } = &cam.source {
        std::fs::File::open(path)
            .map_err(|e| format!("camera[{i}] ({}).source.path: {e}", cam.id))?;
    }
    Ok(())
}

/// Applies a merged, validated config live; on an error nothing changed.
async fn apply<S: FrameSink>(
    running: &mut Running<S>,
    current: &mut AgentConfig,
    next: AgentConfig,
    sink: &Arc<SpoolSink<S>>,
    replace_kafka: Option<&KafkaReplacer>,
    period_tx: &watch::Sender<u64>,
) -> Result<String, String> {
    if let Some(field) = fixed_spool_change(&current.spool, &next.spool) {
        return Err(format!(
            "{field}: cannot be changed while the agent runs (live: spool.max_bytes, max_age_s, min_free_bytes); edit agent.toml and restart"
        ));
    }
    let old: BTreeMap<String, &CameraConfig> = current
        .cameras
        .iter()
        .map(|c| (c.id.to_string(), c))
        .collect();
    let mut changed = Vec::new();
    let mut added = Vec::new();
    for (i, cam) in next.cameras.iter().enumerate() {
        let id = cam.id.to_string();
        match old.get(&id) {
            Some(prev) if *prev == cam => continue,
            Some(prev) => {
                if prev.source != cam.source {
                    check_source(i, cam)?;
                }
                changed.push(id);
            }
            None => {
                check_source(i, cam)?;
                added.push(id);
            }
        }
    }
    let removed: Vec<String> = old
        .keys()
        .filter(|id| !next.cameras.iter().any(|c| c.id.as_str() == id.as_str()))
        .cloned()
        .collect();
    let mut summary = Vec::new();
    if current.kafka != next.kafka {
        let replace = replace_kafka.ok_or("kafka: this agent cannot replace its Kafka client")?;
        let install = replace(&next.kafka).map_err(|e| format!("kafka: {e}"))?;
        // Every camera goes through the client: stop them all, let Kafka
        // take what is queued (the rest is in the spool), swap, restart.
        let all: Vec<String> = running.cameras.keys().cloned().collect();
        running.stop(&all).await;
        if let Err(e) = sink.flush(SHUTDOWN_FLUSH).await {
            tracing::warn!(error = %e, "flush before the Kafka client swap incomplete; the spool keeps the rest");
        }
        install();
        for c in &next.cameras {
            running.start(c.clone());
        }
        summary.push(format!(
            "kafka client replaced ({}), {} cameras restarted",
            next.kafka.connection.bootstrap_servers,
            next.cameras.len()
        ));
    } else {
        let stop: Vec<String> = removed.iter().chain(&changed).cloned().collect();
        running.stop(&stop).await;
        for c in &next.cameras {
            let id = c.id.to_string();
            if changed.contains(&id) || added.contains(&id) {
                running.start(c.clone());
            }
        }
        for (what, ids) in [
            ("added", &added),
            ("changed", &changed),
            ("removed", &removed),
        ] {
            if !ids.is_empty() {
                summary.push(format!("cameras {what}: {}", ids.join(", ")));
            }
        }
    }
    if current.spool != next.spool {
        sink.set_limits(&next.spool);
        summary.push("spool limits".into());
    }
    if let Some(m) = &next.mqtt {
        if period_tx.send_if_modified(|p| {
            std::mem::replace(p, m.telemetry_period_s) != m.telemetry_period_s
        }) {
            summary.push(format!("telemetry every {} s", m.telemetry_period_s));
        }
    }
    *current = next;
    if summary.is_empty() {
        summary.push("no change".into());
    }
    Ok(summary.join("; "))
}

/// The spool's part of telemetry: disk bytes, frames bytes, free bytes,
/// frames evicted since start and the oldest unsent frame's age across cameras.
fn spool_summary(status: &serde_json::Value) -> serde_json::Value {
    let oldest = status["cameras"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["oldest_age_s"].as_f64())
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    // Whole GOPs evicted since the agent started (budget, age or disk floor).
    let evicted: u64 = status["cameras"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["frames_evicted_since_start"].as_u64())
        .sum();
    serde_json::json!({
        "frames_evicted_total": evicted,
        "disk_bytes": status["disk_bytes"],
        "frames_bytes": status["live_bytes"],
        "free_bytes": status["free_bytes"],
        "oldest_age_s": oldest,
    })
}
