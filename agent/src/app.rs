//! Runs the agent's cameras (each a [`Camera`] pipeline that restarts alone)
//! over one shared sink: the disk spool wrapping Kafka (`crate::spool`).
//!
//! Shutdown order: stop every capture -> drain encoders -> hand the rest to
//! the sink and record each camera's exact sequence state -> flush to Kafka
//! (bounded; what is not acknowledged stays in the spool) -> settle acks.

use crate::camera::{Camera, CameraContext, CameraReport, SourceOpener, SystemSources};
use crate::sink::FrameSink;
use crate::spool::SpoolSink;
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::AgentConfig;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    let ctx = Arc::new(CameraContext {
        sink: sink.clone(),
        data_dir: config.data_dir.clone(),
        clock,
        sources,
    });
    let cameras: Vec<Camera> = config
        .cameras
        .iter()
        .map(|c| Camera::start(c.clone(), ctx.clone()))
        .collect();
    let stops: Vec<_> = cameras.iter().map(|c| c.stop_handle()).collect();
    let fleet = match &config.mqtt {
        Some(mqtt) => {
            let stats = cameras
                .iter()
                .map(|c| (c.id.to_string(), c.stats.clone()))
                .collect();
            let probe_sink = sink.clone();
            let probe: crate::fleet::SpoolProbe =
                Arc::new(move || spool_summary(&probe_sink.status()));
            match crate::fleet::Fleet::start(mqtt, stats, probe) {
                Ok(f) => Some(f),
                Err(e) => {
                    // Validated at load, so this is not expected; video goes on.
                    tracing::error!(error = %e, "fleet link not started");
                    None
                }
            }
        }
        None => None,
    };
    let service = tokio::spawn(crate::service::notify_loop(
        cameras
            .iter()
            .map(|c| (c.id.to_string(), c.stats.clone()))
            .collect(),
    ));
    let all = futures::future::join_all(cameras.into_iter().map(Camera::join));
    tokio::pin!(all);
    let ended = tokio::select! {
        ended = &mut all => ended,
        () = shutdown => {
            tracing::info!("shutdown: stopping capture, draining encoders, flushing to Kafka");
            crate::service::stopping();
            service.abort();
            stops.iter().for_each(|s| s.set());
            all.await
        }
    };
    service.abort();
    // Every encoder has stopped: send what Kafka will take within the
    // bound; the rest stays in the spool for the next start.
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH).await {
        tracing::error!(error = %e, "spool flush at shutdown incomplete");
    }
    let mut reports = Vec::new();
    for end in ended {
        // Every reply was settled by the flush; bounded in case one was not.
        if tokio::time::timeout(Duration::from_secs(1), end.acks)
            .await
            .is_err()
        {
            tracing::warn!(camera = %end.report.camera, "acknowledgements still pending at exit");
        }
        reports.push(end.report);
    }
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }
    reports
}

/// The spool's part of telemetry: disk bytes, frames bytes, free bytes and
/// the oldest unsent frame's age across cameras.
fn spool_summary(status: &serde_json::Value) -> serde_json::Value {
    let oldest = status["cameras"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["oldest_age_s"].as_f64())
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    serde_json::json!({
        "disk_bytes": status["disk_bytes"],
        "frames_bytes": status["live_bytes"],
        "free_bytes": status["free_bytes"],
        "oldest_age_s": oldest,
    })
}
