//! Reads `camfleet.detections.v1` (whoever published it: this instance or
//! another) from the newest record on and keeps the recent records per
//! camera for the page's overlay. A record that is not JSON with `camera`
//! and `capture_us` is counted and ignored.

use super::{DetectionEntry, LiveHub};
use crate::consume;
use camfleet_shared::config::CollectorKafkaConfig;
use camfleet_shared::CameraId;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct Head {
    camera: String,
    capture_us: u64,
}

/// Starts the listener task. Its consumer group is private to this process
/// (nothing is committed; a restart starts at the newest record).
pub fn spawn(
    hub: Arc<LiveHub>,
    kafka: &CollectorKafkaConfig,
    topic: &str,
) -> Result<tokio::task::JoinHandle<()>, rdkafka::error::KafkaError> {
    let group = format!(
        "camfleet-live-detections-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let config = consume::watcher_config(kafka, &group, "camfleet-collector-live")
        .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    hub.set_detections_listening(true);
    Ok(tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(msg) => {
                    let Some(payload) = msg.payload() else {
                        continue;
                    };
                    match parse(payload) {
                        Some((camera, entry)) => hub.add_detection(camera, entry),
                        None => {
                            metrics::counter!("camfleet_collector_live_detections_ignored_total")
                                .increment(1);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live view: reading detections");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

fn parse(payload: &[u8]) -> Option<(CameraId, DetectionEntry)> {
    let head: Head = serde_json::from_slice(payload).ok()?;
    let camera = CameraId::new(&head.camera).ok()?;
    let json = std::str::from_utf8(payload).ok()?;
    Some((
        camera,
        DetectionEntry {
            capture_us: head.capture_us,
            json: Arc::from(json),
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn records_need_a_camera_and_capture_time() {
        let (cam, entry) =
            super::parse(br#"{"camera":"a/b","capture_us":5,"objects":[]}"#).unwrap();
        assert_eq!((cam.as_str(), entry.capture_us), ("a/b", 5));
        assert!(super::parse(br#"{"camera":"a/b"}"#).is_none());
        assert!(super::parse(br#"{"camera":"no-site","capture_us":5}"#).is_none());
        assert!(super::parse(b"\xff").is_none());
    }
}
